"""Small runs tell the truth: an EMA that has barely moved is named (analyze, sample-grid, sample), an FID of few
samples comes with its count and bias, and compiling on a CPU is announced before the bar waits at 0."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from repa.training import train
from repa.ema import ema_initial_share
from tests.conftest import PatchTeacher, tiny_train_config

EMA_WORDS = "EMA weights are still"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Real tiny runs: "short" (5 steps at decay 0.999: 99.5% initial weights) and "moved" (10 steps at decay 0.5)."""
    from repa.data.memory import ArrayDataset
    rng = np.random.default_rng(0)
    images = (rng.random((32, 1, 8, 8)) * 255).astype(np.uint8)
    dataset = ArrayDataset(images, rng.integers(0, 3, 32), num_classes=3)
    root = tmp_path_factory.mktemp("short-runs")
    out = {}
    for name, decay, steps in (("short", 0.999, 5), ("moved", 0.5, 10)):
        cfg = tiny_train_config(root / name, ema_decay=decay, max_steps=steps, ckpt_every=steps, log_every=steps)
        out[name] = str(train(cfg, dataset=dataset, encoders=[PatchTeacher(grid=4, dim=16)], progress=False).checkpoint)
    out["dataset"] = dataset
    return out


def test_the_initial_share_is_what_the_training_loop_leaves(tmp_path, tiny_dataset, teacher):
    """decay ** steps against the loop itself: after 2 steps, ema = d^2 w0 + (1 - d) d w1 + (1 - d) w2."""
    from repa.checkpoint import list_checkpoints, load_checkpoint
    from repa.models import build_model
    cfg = tiny_train_config(tmp_path / "run", ema_decay=0.7, max_steps=2, ckpt_every=1, keep_last=5)
    train(cfg, dataset=tiny_dataset, encoders=[teacher], progress=False)
    torch.manual_seed(cfg.seed)
    w0 = build_model(cfg.model).state_dict()
    (_, p1), (_, p2) = list_checkpoints(cfg.run_dir)
    c1, c2 = (load_checkpoint(p) for p in (p1, p2))
    d, name = 0.7, "blocks.0.attn.qkv.weight"
    share = ema_initial_share(d, 2)
    expected = share * w0[name] + (1 - d) * d * c1["model"][name] + (1 - d) * c2["model"][name]
    assert share == pytest.approx(0.49)
    torch.testing.assert_close(c2["ema"][name], expected, rtol=1e-5, atol=1e-6)


def test_sample_grid_names_an_unmoved_ema_and_how_to_read_the_trained_weights(runs, tmp_path):
    """The real command line in a process of its own, so that its stderr is what a user sees."""
    def sample_grid(ckpt, *flags):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.png"
        run = subprocess.run([sys.executable, "-m", "repa", "sample-grid", ckpt, "--out", str(out), "--num", "2",
                              "--steps", "2", "--device", "cpu", *flags], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
        assert run.returncode == 0 and out.is_file(), run.stderr
        return [line for line in run.stderr.splitlines() if "warning" in line]
    lines = sample_grid(runs["short"])
    assert len(lines) == 1 and lines[0].startswith("repa sample-grid: warning:") and EMA_WORDS in lines[0]
    assert "99.5% the initial weights (5 steps at ema_decay 0.999" in lines[0] and "--which model" in lines[0]
    assert sample_grid(runs["short"], "--which", "model") == []
    assert sample_grid(runs["moved"]) == []


def test_analyze_and_sample_warn_for_the_short_run_only(runs, tmp_path):
    from repa.analysis import AnalyzeOptions
    from repa.analysis.run import run_analysis
    from repa.evaluation.generate import sample_to_npz
    opts = AnalyzeOptions(num_samples=24, topk=4, batch_size=24, probe=False)
    for name, warns in (("short", True), ("moved", False)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_analysis([runs[name]], runs["dataset"], str(tmp_path / name), opts,
                         encoder=PatchTeacher(grid=4, dim=16), device="cpu", log=lambda m: None)
            sample_to_npz(runs[name], str(tmp_path / f"s-{name}"), num=2, seed=0, batch_size=2, device="cpu",
                          progress=False, steps=2)
        lines = [str(w.message) for w in caught if EMA_WORDS in str(w.message)]
        assert len(lines) == (2 if warns else 0), lines


@pytest.mark.parametrize("decay,steps,warns", [(0.999, 0, True), (0.999, 999, True), (0.999, 1001, False),
                                                (0.9, 9, True), (0.9, 10, False), (0.0, 1, False)])
def test_the_threshold_is_the_ema_time_constant(decay, steps, warns):
    """Warn while steps < 1 / (1 - decay), i.e. decay ** steps > 1/e: the EMA is still mostly its initial copy."""
    from repa.checkpoint import LoadedModel
    from repa.ema import ema_unmoved_warning
    loaded = LoadedModel(torch.nn.Identity(), tiny_train_config("run", ema_decay=decay), steps, "ckpt.pt")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert (ema_unmoved_warning(loaded, "ema") is not None) == warns
        assert ema_unmoved_warning(loaded, "model") is None
        assert ema_unmoved_warning(LoadedModel(torch.nn.Identity(), None, steps), "ema") is None   # decay unknown


def test_small_sample_fid_comes_with_its_count_and_bias(tmp_path, monkeypatch, capsys):
    """The library returns the note (not written into the JSON file); `repa eval` prints it after the JSON."""
    import functools

    from repa.cli import main
    from repa.evaluation import evaluate as evaluate_mod
    from repa.evaluation.evaluate import evaluate_samples, fid_note
    from tests.test_evaluation_metrics import FakeInception, _adm_npz, _images
    samples, ref = _adm_npz(tmp_path / "s.npz", _images(200, 0)), _adm_npz(tmp_path / "r.npz", _images(40, 1))
    metrics = evaluate_samples(str(samples), str(ref), inception=FakeInception(), progress=False)
    assert metrics["num_samples"] == 200 and any("FID from 200 samples" in n and "biased upward" in n
                                                 and "50,000" in n for n in metrics["notes"])
    assert "notes" not in json.loads((tmp_path / "s.metrics.json").read_text())
    assert fid_note(50_000) is None and "FID-49999" in fid_note(49_999)
    # the command line: the real evaluate_samples with the test network in place of the 90 MB Inception file
    monkeypatch.setattr(evaluate_mod, "evaluate_samples",
                        functools.partial(evaluate_samples, inception=FakeInception(), progress=False))
    assert main(["eval", str(samples), "--ref", str(ref), "--out", str(tmp_path / "m.json")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["num_samples"] == 200
    assert "note: FID from 200 samples (FID-200) is biased upward" in err


def test_compiling_on_a_cpu_is_announced_before_the_first_step(tmp_path, tiny_dataset, teacher, capsys):
    from repa.config import ConfigError
    from repa.preflight import check_compile, compile_notice
    assert "minutes" in compile_notice("cpu") and "--compile false" in compile_notice("cpu")
    assert "minutes" not in compile_notice("cuda")
    try:
        check_compile("cpu")
    except ConfigError:
        pytest.skip("this PyTorch cannot compile on the CPU (the preflight refuses --compile)")
    for compiled in (True, False):       # stop before step 1: the announcement comes before any compilation
        cfg = tiny_train_config(tmp_path / f"run-{compiled}", compile=compiled)
        train(cfg, dataset=tiny_dataset, encoders=[teacher], progress=False, stop_at_step=0)
        assert (compile_notice("cpu") in capsys.readouterr().out) == compiled
