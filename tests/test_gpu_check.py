"""bench/gpu_check.py: its dry run (CPU, tiny sizes) runs every part and survives a crashing and a hanging part."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_reports_every_part_and_survives_a_crash_and_a_hang(tmp_path):
    gc = _gpu_check()
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path),
                           "--inject", "train_xl=fail", "--inject", "maxbatch_ckpt=hang",
                           "--timeout", "maxbatch_ckpt=4"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (tmp_path / "gpu_check.log").stat().st_size > 0
    assert report["schema"] == gc.SCHEMA and report["mode"] == "dry-run"
    assert report["injected"] == {"train_xl": "fail", "maxbatch_ckpt": "hang"}
    parts = report["parts"]
    assert list(parts) == list(gc.PARTS)
    status = {name: part["status"] for name, part in parts.items()}
    assert status["train_xl"] == "error" and "injected failure" in parts["train_xl"]["note"]
    assert status["maxbatch_ckpt"] == "timeout" and parts["maxbatch_ckpt"]["wall_s"] < 30
    ran = [name for name in gc.PARTS if name not in ("train_xl", "maxbatch_ckpt")]
    assert all(status[name] == "ok" for name in ran), {n: parts[n] for n in ran if status[n] != "ok"}
    for name in ran:
        part = parts[name]
        assert part["rows"] and all(row["ok"] and row["name"] for row in part["rows"])
        assert set(part) >= {"status", "wall_s", "budget_s", "rows"}
    rows = {name: {row["name"]: row for row in parts[name]["rows"]} for name in ran}
    assert rows["env"]["versions"]["torch"] and rows["env"]["matmul_bf16"]["tflops_per_s"] > 0
    assert rows["tests"]["gpu_tests"]["tests"] > 0                  # collected (and skipped: no GPU here)
    for row in rows["sample"].values():
        assert row["baseline_images_per_s"] > 0 and row["fast_images_per_s"] > 0 and row["steps"] > 0
    found = rows["maxbatch"]["xl2"]
    assert 1 <= found["batch"] <= report["plan"]["maxbatch"]["cap"] and found["trials"][-1]["batch"] == found["batch"]
    assert rows["train_bl"]["b2_repa_cache"]["step_s"] > 0
    assert set(report["targets"]) == set(gc.TARGETS)
    assert all(t["met"] is None for t in report["targets"].values())         # nothing is judged on a dry run
    for line in ("[  error] train_xl", "[timeout] maxbatch_ckpt", "[     ok] sample", "targets:"):
        assert line in proc.stdout


def test_largest_batch_follows_the_memory_line_and_backs_off_when_out_of_memory():
    gc = _gpu_check()
    gib = 2 ** 30
    fixed, per_image, capacity = 14 * gib, 0.5 * gib, 100 * gib
    really_fits = 160                                  # fragmentation: less than the line predicts (172)
    tried = []

    def trial(batch):
        tried.append(batch)
        if batch > really_fits:
            raise gc.OutOfMemory(f"batch {batch}")
        return fixed + per_image * batch

    predictions = []
    found = gc.largest_batch(trial, capacity, probes=(8, 32), multiple=8, retries=3, on_prediction=predictions.append)
    assert found["predicted"] == 172 and found["per_image_mib"] == 512 and found["fixed_gib"] == 14
    assert tried == [8, 32, 168, 144]                  # 172 -> 168 (a multiple of 8): OOM; then 10% less
    assert found["batch"] == 144 and found["trials"][2]["oom"] is True
    assert predictions and predictions[0]["predicted"] == 172 and len(predictions[0]["trials"]) == 2


def test_largest_batch_rejects_memory_that_does_not_grow():
    gc = _gpu_check()
    with pytest.raises(RuntimeError, match="did not grow"):
        gc.largest_batch(lambda batch: 10 * 2 ** 30, 80 * 2 ** 30)


def test_targets_are_judged_on_the_measured_rows():
    gc = _gpu_check()
    parts = {"train_xl": {"rows": [
                {"name": "xl2_repa_cache", "ok": True, "step_s": 1.04, "mfu": 0.38},
                {"name": "xl2_vanilla", "ok": True, "step_s": 1.0, "mfu": 0.36},
                {"name": "xl2_repa_cache_compiled", "ok": True, "step_s": 0.9, "mfu": 0.44},
                {"name": "xl2_repa_live", "ok": False, "error": "boom"}]},
             "sample": {"rows": [{"name": "xl2_sde250", "ok": True, "speedup": 2.5},
                                 {"name": "xl2_euler50", "ok": True, "speedup": 1.8}]}}
    targets = gc.check_targets(parts)
    assert targets["xl_repa_mfu"] == {**targets["xl_repa_mfu"], "value": 0.44, "from": "xl2_repa_cache_compiled",
                                      "met": True}
    assert targets["xl_cache_overhead"]["value"] == pytest.approx(0.04) and targets["xl_cache_overhead"]["met"]
    assert targets["sampling_speedup"]["value"] == 1.8 and targets["sampling_speedup"]["met"] is False
    assert all(t["met"] is None for t in gc.check_targets({}).values())


def test_gpu_mode_without_a_gpu_says_so_in_one_line(tmp_path, capsys):
    gc = _gpu_check()
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    assert gc.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpu_check: error: no CUDA device") and err.count("\n") == 1
    assert not (tmp_path / "gpu_check.json").exists()
