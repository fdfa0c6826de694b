"""A tiny-budget run of the default job: report, plots and numbers exist and the two arms differ only in lambda."""
import gzip
import json
import math
import struct

import numpy as np
import pytest

from repa.demo import DemoConfig, run_demo
from repa.demo.pipeline import FASHION_MNIST, train_config
from repa.demo.report import speedup


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _small_fashion_mnist(folder, num_train, num_test):
    """The first items of the real Fashion-MNIST files, rewritten as IDX files (same format, fewer items)."""
    from repa.data.idx import read_idx
    for split, n in (("train", num_train), ("t10k", num_test)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{split}-{kind}-ubyte.gz"
            _write_idx(folder / name, np.ascontiguousarray(read_idx(f"{FASHION_MNIST}/{name}")[:n]))


def test_speedup_interpolates_the_repa_curve():
    factor, _ = speedup([(100, 80.0), (200, 50.0), (400, 30.0)], (400, 40.0))
    assert math.isclose(factor, 400 / 300)            # 50 -> 30 between 200 and 400: FID 40 at step 300
    factor, how = speedup([(100, 90.0), (400, 60.0)], (400, 40.0))
    assert factor is None and "never" in how
    factor, how = speedup([(100, 30.0), (400, 20.0)], (400, 40.0))
    assert factor == 4.0 and "lower bound" in how


def test_arms_differ_only_in_lambda():
    demo = DemoConfig()
    a = train_config(demo, demo.proj_coeff, "runs/x/repa", "data")
    b = train_config(demo, 0.0, "runs/x/vanilla", "data")
    from repa.config import diff
    assert set(diff(a, b)) == {"objective.proj_coeff", "run_dir"}


@pytest.mark.timeout(300)
def test_tiny_demo_writes_report_with_finite_fids(tmp_path):
    source = tmp_path / "fmnist"
    source.mkdir()
    _small_fashion_mnist(source, 512, 128)
    demo = DemoConfig(minutes=0.4, steps_per_minute=20, out=str(tmp_path / "demo"), data_root=str(tmp_path / "data"),
                      source=str(source), batch_size=16, depth=2, width=64, heads=2, projector_dim=64,
                      samples_early=24, samples_final=32, ref_images=48, align_images=32, sample_steps=2)
    report = run_demo(demo, progress=False)
    text = report.read_text()
    out = tmp_path / "demo"
    for name in ("fid.png", "losses.png", "alignment.png", "samples_repa.png", "samples_vanilla.png"):
        assert (out / name).stat().st_size > 1000, name
        assert f"({name})" in text
    evals = json.loads((out / "evaluations.json").read_text())
    assert sorted(int(s) for s in evals["REPA"]["evals"]) == demo.eval_steps == [2, 4, 8]
    for arm in ("REPA", "vanilla"):
        for step, record in evals[arm]["evals"].items():
            assert math.isfinite(record["fid"]) and record["fid"] > 0
            assert record["num_samples"] == (32 if int(step) == 8 else 24)
            assert -1 <= record["cknna"] <= 1
    assert "Speed-up" in text and "Final FID after 8 steps" in text and "against 48 real test images" in text
    # the two runs differ only in lambda: identical saved configs but for proj_coeff (and their folders)
    a = json.loads((out / "repa" / "config.json").read_text())
    b = json.loads((out / "vanilla" / "config.json").read_text())
    assert a["objective"].pop("proj_coeff") == 0.5 and b["objective"].pop("proj_coeff") == 0.0
    assert a.pop("run_dir") != b.pop("run_dir") and a == b
    # a second run reuses everything: no training, same numbers
    run_demo(demo, progress=False)
    assert json.loads((out / "evaluations.json").read_text()) == evals
