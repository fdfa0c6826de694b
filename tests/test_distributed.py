"""Two gloo processes under torchrun equal one process with the same global batch."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from repa.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _run(run_dir, nproc, accum=1, parallel="ddp", max_steps=6, align_stop=0):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "tests" / "dist_worker.py"), str(run_dir), str(accum), parallel, str(max_steps), str(align_stop)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_checkpoint(Path(run_dir) / "checkpoints" / f"{max_steps:08d}.pt")


def _metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_equal_one_process(tmp_path):
    one = _run(tmp_path / "one", 1)
    two = _run(tmp_path / "two", 2, accum=2)
    for name, value in one["model"].items():
        assert torch.allclose(value, two["model"][name], atol=1e-5, rtol=0), name
    assert len(two["rng"]) == 2 and two["data"]["world_size"] == 2
    # the logged scalars are the global batch's (reduced over the ranks), not rank 0's share
    logged_one, logged_two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["step"] for r in logged_one] == [r["step"] for r in logged_two] and logged_one
    for a, b in zip(logged_one, logged_two):
        for key in ("loss", "denoise_loss", "align_loss"):
            assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-6), (a["step"], key, a[key], b[key])


def test_ddp_survives_the_alignment_term_stopping(tmp_path):
    """After ``align_stop_step`` the projectors get no gradient; DDP must not wait for them (it would raise
    "Expected to have finished reduction" at the next step)."""
    one = _run(tmp_path / "one", 1, align_stop=3)
    two = _run(tmp_path / "two", 2, align_stop=3)
    for name, value in one["model"].items():
        assert torch.allclose(value, two["model"][name], atol=1e-5, rtol=0), name


def test_fsdp_two_processes_equal_one_process_and_resume(tmp_path):
    one = _run(tmp_path / "one", 1)
    # FSDP: stopped after 3 steps (checkpoint at 3), then resumed to 6 from the gathered checkpoint
    _run(tmp_path / "fsdp", 2, parallel="fsdp", max_steps=3)
    two = _run(tmp_path / "fsdp", 2, parallel="fsdp", max_steps=6)
    for key in ("model", "ema"):
        for name, value in one[key].items():
            assert torch.allclose(value, two[key][name], atol=1e-5, rtol=0), f"{key}.{name}"


def test_accelerate_launch_is_torchrun_and_its_own_settings_are_refused(monkeypatch):
    """accelerate launch sets torchrun's variables (and these of its own): "no" precision / dynamo run as torchrun;
    asking accelerate for bf16 or a dynamo backend is refused in one line naming repa's flag and torchrun."""
    import pytest

    from repa import distributed
    from repa.config import ConfigError
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")
    assert distributed.init("cpu").world_size == 1
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ConfigError, match=r"ACCELERATE_MIXED_PRECISION=bf16 .*--precision bf16\|fp16.*torchrun"):
        distributed.init("cpu")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    with pytest.raises(ConfigError, match="--compile"):
        distributed.init("cpu")
