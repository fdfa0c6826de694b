"""Reliability, round two (issue 31): every input checked at the boundary, nothing written for a refused start,
no garbage with exit 0, no user file lost. One parametrised test per kind of the issue; each asserts the exit code,
one stderr line without a traceback, and the folder's contents before and after."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import repa
from repa.cli import main
from repa.config import ConfigError, SampleConfig
from tests.test_reliability import (_assert_one_line_error, _cli, _files, _image_folder, checkpoint,  # noqa: F401
                                    config_file, dataset_dir)


@pytest.fixture
def ctx(tmp_path, dataset_dir, config_file, checkpoint):
    c = type("Ctx", (), {})()
    c.tmp, c.data, c.cfg, c.ckpt = tmp_path, dataset_dir, config_file, checkpoint
    return c


def _refused(capsys, c, argv, command, *needles, code=2, folder=None):
    folder = folder or c.tmp
    before = _files(folder)
    got, err = _cli(capsys, argv)
    _assert_one_line_error(got, err, command, *needles, expect_code=code)
    assert _files(folder) == before, f"left behind: {_files(folder) - before}"


# ---- 1: a user's file is never lost ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_export_never_replaces_a_users_file(capsys, ctx, name):
    out = ctx.tmp / "out"
    out.mkdir()
    (out / name).write_text("mine")
    _refused(capsys, ctx, ["export", ctx.ckpt, out], "export", name, "--overwrite")
    assert (out / name).read_text() == "mine"
    assert main(["export", str(ctx.ckpt), str(out), "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["weights_sha256"]


# ---- 2: never garbage with exit 0 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, command, needle", [
    (["sample", "{ckpt}", "--num", "2", "--out", "{tmp}/s", "--cfg-scale", "nan"], "sample", "cfg_scale"),
    (["sample", "{ckpt}", "--num", "2", "--out", "{tmp}/s", "--cfg-scale", "1e39"], "sample", "cfg_scale"),
    (["sample-grid", "{ckpt}", "--num", "2", "--out", "{tmp}/g.png", "--cfg-scale", "inf"], "sample-grid", "cfg_scale"),
    (["sample-grid", "{ckpt}", "--num", "2", "--out", "{tmp}/g.png", "--cfg-scale", "nan"], "sample-grid", "cfg_scale"),
    (["train", "--config", "{cfg}", "--run-dir", "{tmp}/r", "--optim.lr", "1e38", "--optim.grad-clip", "0",
      "--max-skipped-steps", "10", "--max-steps", "4"], "train", "non-finite training"),
], ids=["sample-nan", "sample-huge", "grid-inf", "grid-nan", "all-steps-skipped"])
def test_no_garbage_with_exit_zero(capsys, ctx, argv, command, needle):
    argv = [a.format(ckpt=ctx.ckpt, tmp=ctx.tmp, cfg=ctx.cfg) for a in argv]
    before = _files(ctx.tmp)
    got, err = _cli(capsys, argv)
    _assert_one_line_error(got, err, command, needle)
    assert not list(ctx.tmp.rglob("*.pt")) and not list(ctx.tmp.rglob("*.png")) and not list(ctx.tmp.rglob("*.npz"))
    assert _files(ctx.tmp) - before <= {"r", "r/config.json"}      # a run that started keeps only its config


def test_sources_are_read_once_and_idx_floats_are_scaled(tmp_path):
    from repa.data.idx import load_fashion_mnist
    from repa.data.sources import list_source
    src = _image_folder(tmp_path / "src", n_per_class=3)
    os.symlink(".", src / "class0" / "loop")
    os.symlink("../class0", src / "class1" / "again")
    listing = list_source(str(src))
    assert len(listing.refs) == 6 and len(set(listing.refs)) == 6
    idx = tmp_path / "fm"
    idx.mkdir()
    images = np.linspace(0, 1, 2 * 28 * 28, dtype=">f4").reshape(2, 28, 28)
    with gzip.open(idx / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x0D, 3) + struct.pack(">III", 2, 28, 28) + images.tobytes())
    with gzip.open(idx / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, 1) + struct.pack(">I", 2) + bytes([0, 1]))
    out, _ = load_fashion_mnist(str(idx), "train")
    assert out.dtype == np.uint8 and out.max() == 255 and len(np.unique(out)) > 100


# ---- 3: the run's own config decides; caches and odd checkpoints never block --------------------------------------------

def test_resume_compares_with_the_checkpoint_and_skips_other_models(capsys, tmp_path, config_file):
    run = tmp_path / "run"
    base = ["train", "--config", str(config_file), "--run-dir", str(run), "--max-steps", "2"]
    assert main(base) == 0
    (run / "config.json").unlink()
    before = _files(run)
    got, err = _cli(capsys, base + ["--optim.lr", "0.5"])
    _assert_one_line_error(got, err, "train", "optim.lr", expect_code=2)
    assert _files(run) == before
    got, err = _cli(capsys, base + ["--allow-config-change", "--model.hidden-size", "64"])
    _assert_one_line_error(got, err, "train", "model.hidden_size", expect_code=2)
    assert _files(run) == before
    other = tmp_path / "other"
    assert main(base[:4] + [str(other), "--max-steps", "4", "--model.hidden-size", "64"]) == 0
    shutil.copy(other / "checkpoints" / "00000004.pt", run / "checkpoints" / "00000004.pt")
    with pytest.warns(UserWarning, match="another model") as record:
        assert main(base[:-1] + ["6"]) == 0
    assert len(record) == 1


def test_a_corrupt_statistics_cache_is_removed_and_recomputed(tmp_path):
    from repa.evaluation.evaluate import _read_cache
    cache = tmp_path / "stats.npz"
    np.savez(cache, mu=np.zeros(3), sigma=np.eye(3))
    cache.write_bytes(cache.read_bytes()[:50])
    with pytest.warns(UserWarning, match="corrupt"):
        assert _read_cache(cache) is None
    assert not cache.exists()


# ---- 4 + 5: values the config refuses, before anything is written ------------------------------------------------------

TRAIN_CASES = [
    (["--model.num-heads", "0"], "model.num_heads"), (["--model.mlp-ratio", "-1"], "model.mlp_ratio"),
    (["--model.hidden-size", "30", "--model.num-heads", "2"], "model.hidden_size"),
    (["--model.num-classes", "10000000000"], "model.num_classes"), (["--model.projector-dim", "-1"], "projector_dim"),
    (["--optim.eps", "-1"], "optim.eps"), (["--optim.beta1", "1.5"], "optim.beta1"),
    (["--seed", str(2 ** 70)], "seed"), (["--optim.warmup-steps", "-1"], "warmup_steps"),
    (["--milestone-every", "-1"], "milestone_every"), (["--max-skipped-steps", "-1"], "max_skipped_steps"),
    (["--sample-every", "-1"], "sample_every"), (["--data.num-workers", "-1"], "num_workers"),
    (["--optim.lr", "nan"], "optim.lr"), (["--ema-decay", "inf"], "ema_decay"),
]


@pytest.mark.parametrize("flags, needle", TRAIN_CASES, ids=[c[1] + str(i) for i, c in enumerate(TRAIN_CASES)])
def test_train_refuses_bad_values_and_writes_nothing(capsys, ctx, flags, needle):
    _refused(capsys, ctx, ["train", "--config", ctx.cfg, "--run-dir", ctx.tmp / "r", *flags], "train", needle)


def test_empty_output_paths_are_refused(capsys, ctx):
    _refused(capsys, ctx, ["train", "--config", ctx.cfg, "--run-dir", ""], "train", "run_dir")
    _refused(capsys, ctx, ["sample", ctx.ckpt, "--num", "2", "--out", ""], "sample", "--out")


@pytest.mark.parametrize("argv, command, needle", [
    (["sample", "{ckpt}", "--num", "1000000000000", "--out", "{tmp}/s"], "sample", "num"),
    (["sample", "{ckpt}", "--num", "2", "--out", "{tmp}/s", "--cfg-scale", "2", "--guided-channels", "5"], "sample",
     "guided_channels"),
    (["sample", "{ckpt}", "--num", "2", "--out", "{tmp}/s", "--sampler", "ddpm"], "sample", "ddpm"),
    (["sample", "{ckpt}", "--num", "2", "--out", "{tmp}/s", "--seed", str(2 ** 70)], "sample", "seed"),
    (["eval", "{tmp}/x.npz", "--ref", "{data}", "--logits", "{tmp}/bad.npz"], "eval", "--logits"),
    (["demo", "--out", "{tmp}/d", "--data-root", "{tmp}/dr", "--lr", "nan"], "demo", "lr"),
    (["demo", "--out", "{tmp}/d", "--data-root", "{tmp}/dr", "--ema-decay", "1.5"], "demo", "ema_decay"),
    (["demo", "--out", "{tmp}/d", "--data-root", "{tmp}/dr", "--depth", "0"], "demo", "depth"),
    (["demo", "--out", "{tmp}/d", "--data-root", "{tmp}/dr", "--encoder-depth", "9"], "demo", "encoder_depth"),
    (["demo", "--out", "{tmp}/d", "--data-root", "{tmp}/dr", "--align-t", "5"], "demo", "align_t"),
    (["demo", "--out", "{tmp}/d", "--data-root", "{tmp}/dr", "--sampler", "bogus"], "demo", "sampler"),
    (["demo", "--out", "{tmp}/d", "--data-root", "{tmp}/dr", "--teacher", "bogus"], "demo", "bogus"),
    (["prepare", "{src}", "{tmp}/p", "--resolution", "40000"], "prepare", "resolution"),
], ids=["num", "guided-channels", "ddpm-on-sit", "sample-seed", "truncated-logits", "demo-lr", "demo-ema",
        "demo-depth", "demo-encoder-depth", "demo-align-t", "demo-sampler", "demo-teacher", "prepare-resolution"])
def test_other_commands_refuse_bad_values_and_write_nothing(capsys, ctx, argv, command, needle):
    np.savez(ctx.tmp / "x.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    np.savez(ctx.tmp / "bad.npz", weight=np.zeros((1008, 2048), np.float32))
    (ctx.tmp / "bad.npz").write_bytes((ctx.tmp / "bad.npz").read_bytes()[:100])
    argv = [a.format(ckpt=ctx.ckpt, tmp=ctx.tmp, data=ctx.data, src=ctx.data.parent / "src") for a in argv]
    _refused(capsys, ctx, argv, command, needle)


@pytest.mark.parametrize("manifest", [[1, 2], {"drop": "shards"}], ids=["json-list", "no-shards"])
def test_a_damaged_manifest_is_one_line(capsys, ctx, manifest):
    data = ctx.tmp / "ds"
    shutil.copytree(ctx.data, data)
    m = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps(manifest if isinstance(manifest, list) else
                                                   {k: v for k, v in m.items() if k != "shards"}))
    _refused(capsys, ctx, ["train", "--config", ctx.cfg, "--run-dir", ctx.tmp / "r", "--data.path", data], "train",
             "manifest.json")


# ---- 6: integrity ------------------------------------------------------------------------------------------------------

def test_sha256sum_sidecars_are_read_and_a_missing_digest_warns(tmp_path, checkpoint):
    from repa.checkpoint import load_checkpoint
    from repa.integrity import DIGEST_KEY
    from repa.utils import sha256_file
    path = tmp_path / "c.pt"
    shutil.copy(checkpoint, path)
    (tmp_path / "c.pt.sha256").write_text(f"{sha256_file(path)}  c.pt\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(path)
    state = torch.load(checkpoint, weights_only=True)
    del state[DIGEST_KEY]
    torch.save(state, path)
    (tmp_path / "c.pt.sha256").unlink()
    with pytest.warns(UserWarning, match="no digest"):
        load_checkpoint(path)


def test_an_exported_folder_is_checked_on_load(tmp_path, checkpoint):
    from repa.checkpoint import CheckpointError, export_model, load_model
    folder = export_model(checkpoint, tmp_path / "exp")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-3] ^= 1
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(folder)


# ---- 7: the Python API raises ConfigError with the same messages ------------------------------------------------------

def test_python_api_errors_are_config_errors(tmp_path, checkpoint):
    with pytest.raises(ConfigError, match="TrainConfig"):
        repa.train("x")
    loaded = repa.load_model(checkpoint)
    cfg = loaded.config
    noise = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size)
    for bad_noise, cond, needle in [(torch.randn(2, 3, 5, 5), torch.tensor([0, 1]), "noise"),
                                    (noise, torch.tensor([0, 1, 1]), "cond"),
                                    (noise, torch.tensor([0.0, 1.0]), "cond"),
                                    (noise, torch.tensor([0, 99]), "labels")]:
        with pytest.raises(ConfigError, match=needle):
            repa.sample(loaded, bad_noise, cond, steps=2, sampler="euler")
    for bad in (dict(steps="ten"), dict(cfg_scale=float("nan")), dict(guidance_low=-1.0)):
        with pytest.raises(ConfigError):
            repa.sample(loaded, noise, torch.tensor([0, 1]), SampleConfig(**bad))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError):
            repa.load_model(checkpoint, device="cuda")
