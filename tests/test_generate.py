"""Reproducible, resumable sampling: per-sample seeds, batch-size invariance, ``repa sample`` files and resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import repa.evaluation.generate as generate_mod
from repa.evaluation import generate_images, open_samples, sample_to_npz
from repa.evaluation.generate import sample_labels, sample_noise
from tests.conftest import tiny_model_config


def _tiny_model(**overrides):
    from repa.models import build_model
    torch.manual_seed(0)
    model = build_model(tiny_model_config(**overrides))
    with torch.no_grad():                       # adaLN-Zero starts at zero: perturb so that samples are not noise
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _checkpoint(path, model):
    from repa.checkpoint import FORMAT, FORMAT_VERSION, atomic_torch_save
    from repa.config import TrainConfig, to_json
    cfg = TrainConfig(model=model.config, encoders=("patch-teacher",))
    state = model.state_dict()
    atomic_torch_save({"format": FORMAT, "format_version": FORMAT_VERSION, "config": to_json(cfg),
                       "model": state, "ema": state, "steps": 0}, path)
    return str(path)


def test_noise_and_labels_depend_on_seed_and_index_only():
    a, b = sample_noise([3, 4, 5], 7, (1, 4, 4)), sample_noise([5, 4], 7, (1, 4, 4))
    assert torch.equal(a[2], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(sample_noise([3], 8, (1, 4, 4))[0], a[0])
    np.testing.assert_array_equal(sample_labels([3, 4, 5], 7, 10)[1:], sample_labels([4, 5], 7, 10))
    np.testing.assert_array_equal(sample_labels(np.arange(7), 0, 3, "balanced"), [0, 1, 2, 0, 1, 2, 0])
    labels = sample_labels(np.arange(2000), 1, 10)
    assert set(labels.tolist()) == set(range(10))


@pytest.mark.parametrize("sampler", ["euler", "heun", "sde"])
def test_batch_size_does_not_change_the_images(sampler):
    model = _tiny_model()
    kwargs = dict(seed=3, sampler=sampler, steps=4, cfg_scale=1.5, guidance_interval=(0.0, 0.7))
    a = generate_images(model, 10, batch_size=3, **kwargs)
    b = generate_images(model, 10, batch_size=7, **kwargs)
    assert a.dtype == np.uint8 and a.shape == (10, 1, 8, 8)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a.reshape(10, -1), axis=0)) == 10
    np.testing.assert_array_equal(generate_images(model, 4, start=6, batch_size=4, **kwargs), a[6:])


@pytest.mark.parametrize("interval, match", [((0.2, 0.1), "guidance interval"), ((-0.1, 0.5), "guidance interval"),
                                             ((0.0, 1.5), "guidance interval")])
def test_bad_guidance_interval_fails_before_any_work(interval, match):
    with pytest.raises(ValueError, match=match):
        generate_images(None, 4, guidance_interval=interval)       # no model needed to reject the arguments


def test_model_dependent_checks():
    with pytest.raises(ValueError, match="null class"):
        generate_images(_tiny_model(class_dropout=0.0), 2, cfg_scale=2.0)
    model = _tiny_model()
    with pytest.raises(ValueError, match="needs no VAE"):
        generate_images(model, 2, vae="stabilityai/sd-vae-ft-ema")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        generate_images(model, 2, labels=[0, 3])
    np.testing.assert_array_equal(generate_images(model, 2, labels=[2, 1], steps=2)[1],
                                  generate_images(model, 2, labels="balanced", steps=2)[1])


def test_repa_sample_writes_adm_npz_grid_settings(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.pt", _tiny_model())
    out = tmp_path / "samples"
    path = sample_to_npz(ckpt, str(out), num=5, seed=1, sampler="euler", steps=3, cfg_scale=1.0,
                         labels="balanced", batch_size=2, progress=False)
    f = open_samples(path)
    assert (f.num, f.height, f.width) == (5, 8, 8)
    arr = np.concatenate(list(f.iter_batches(5)))
    assert (arr[:, 0] == arr[:, 1]).all() and (arr[:, 0] == arr[:, 2]).all()    # greyscale replicated
    np.testing.assert_array_equal(f.read("labels"), [0, 1, 2, 0, 1])
    model = _tiny_model()
    direct = generate_images(model, 5, seed=1, sampler="euler", steps=3, labels="balanced")
    np.testing.assert_array_equal(arr[:, :1], direct)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["settings"]["num"] == 5 and settings["model"]["in_channels"] == 1
    assert (out / "grid.png").is_file() and not (out / "shards").exists()        # no empty shards/ left
    with pytest.raises(ValueError, match="other settings"):
        sample_to_npz(ckpt, str(out), num=5, seed=2, sampler="euler", steps=3, cfg_scale=1.0, progress=False)


def test_resumed_sampling_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    ckpt = _checkpoint(tmp_path / "m.pt", _tiny_model())
    kwargs = dict(num=7, seed=4, sampler="euler", steps=3, cfg_scale=1.5, batch_size=2, progress=False)
    full = sample_to_npz(ckpt, str(tmp_path / "full"), **kwargs)

    real, calls = generate_mod.generate_batch, []

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kw)
    monkeypatch.setattr(generate_mod, "generate_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        sample_to_npz(ckpt, str(tmp_path / "resumed"), **kwargs)
    assert len(list((tmp_path / "resumed" / "shards").glob("*.npz"))) == 2
    calls.clear()
    resumed = sample_to_npz(ckpt, str(tmp_path / "resumed"), **{**kwargs, "batch_size": 2})
    assert len(calls) == 2                                     # only the 2 unfinished batches of 4 ran
    with np.load(full) as a, np.load(resumed) as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
        np.testing.assert_array_equal(a["labels"], b["labels"])


def test_cli_sample_and_eval_parse(tmp_path):
    from repa.cli import parse_command
    from repa.config import SampleConfig
    opts = parse_command("sample", ["ckpt.pt", "--num", "10", "--out", str(tmp_path)])
    assert opts.sampling == SampleConfig() and opts.num_samples == 10          # the shared, documented defaults
    opts = parse_command("sample", ["ckpt.pt", "--num-samples", "10", "--out", str(tmp_path), "--cfg-scale", "1.8",
                                    "--guidance-high", "0.7", "--sampler", "sde"])
    assert opts.sampling == SampleConfig(sampler="sde", cfg_scale=1.8, guidance_high=0.7)
    opts = parse_command("eval", ["s.npz", "--ref", "ref.npz", "--dinov2"])   # --dinov2 alone: default weights
    assert opts.dinov2 == "default" and opts.logits is None


def test_two_torchrun_processes_write_the_same_samples_as_one(tmp_path):
    """`torchrun --nproc_per_node 2 repa sample` (gloo) equals one process with another batch size."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    ckpt = _checkpoint(tmp_path / "m.pt", _tiny_model())
    args = ["sample", ckpt, "--num-samples", "9", "--sampler", "euler", "--steps", "3", "--cfg-scale", "1.5"]
    one = sample_to_npz(ckpt, str(tmp_path / "one"), num=9, sampler="euler", steps=3, cfg_scale=1.5,
                        batch_size=4, progress=False)
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "repa.cli",
           *args, "--out", str(tmp_path / "two"), "--batch-size", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "settings.json").read_text())["world_size"] == 2
    with np.load(one) as a, np.load(tmp_path / "two" / "samples.npz") as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
