"""The measurements of bench/gpu_check.py, one function per part, each run in a child process.

``emit`` (``Rows``) appends one measurement row to a JSON-lines file that the parent reads back, so the rows a part
finished survive its crash or time-out. The parent (plans, budgets, report) is bench/gpu_check.py.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# ---- the parts (each runs in a child process; ``emit`` appends one measurement row) --------------------------------

class Reported(Exception):
    """A measurement that ran but failed its check; its figures still go into the (not ok) row."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


class Rows:
    """Appends one JSON line per measurement to the child's result file (read by the parent even after a kill)."""

    def __init__(self, path: str):
        self.path = path

    def emit(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def measure(self, name: str, fn, **info) -> dict | None:
        """Run ``fn()`` (a dict of figures); its row says ok, or the error with the end of its traceback."""
        start = time.perf_counter()
        try:
            result = fn()
            self.emit({"name": name, "ok": True, **info, **result, "wall_s": round(time.perf_counter() - start, 1)})
            return result
        except Reported as exc:
            self.emit({"name": name, "ok": False, **info, **exc.figures, "error": str(exc),
                       "wall_s": round(time.perf_counter() - start, 1)})
            return None
        except BaseException as exc:                      # noqa: BLE001 (a report, not a control flow)
            self.emit({"name": name, "ok": False, **info, "error": _one_line(exc),
                       "traceback": traceback.format_exc()[-3000:], "wall_s": round(time.perf_counter() - start, 1)})
            _free_memory()
            if isinstance(exc, KeyboardInterrupt):
                raise
            return None


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:400]


def _free_memory() -> None:
    import gc
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _bench(name: str):
    """A module of bench/ (train_step, sample) imported by file name."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def part_env(plan: dict, rows: Rows) -> None:
    import importlib
    import torch

    def versions():
        info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count()}
        missing = []
        for module in ("numpy", "scipy", "transformers", "safetensors", "tqdm", "PIL", "pytest", "pytest_timeout",
                       "triton", "diffusers"):
            try:
                info[module] = getattr(importlib.import_module(module), "__version__", "present")
            except Exception:                             # noqa: BLE001
                missing.append(module)
        info["missing_modules"] = missing
        try:
            import repa
            info["repa"] = repa.__version__
            info["repa_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                                 capture_output=True, text=True, timeout=10).stdout.strip() or None
        except Exception as exc:                          # noqa: BLE001
            info["repa"] = _one_line(exc)
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                        multiprocessors=p.multi_processor_count, memory_gib=round(p.total_memory / 2 ** 30, 1))
            peak = _bench("train_step").peak_bf16_flops(info["gpu"])
            info["datasheet_bf16_tflops"] = peak / 1e12 if peak else None
            try:
                info["nvidia_smi"] = subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                     "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
            except Exception as exc:                      # noqa: BLE001
                info["nvidia_smi"] = _one_line(exc)
        return info

    rows.measure("versions", versions)
    device = plan["device"]
    for dtype_name, tf32 in (("bf16", False), ("fp32_tf32", True)):
        rows.measure(f"matmul_{dtype_name}", lambda: _matmul_rate(plan["matmul_size"], dtype_name, tf32, device))


def _matmul_rate(n: int, dtype_name: str, tf32: bool, device: str) -> dict:
    """TFLOP/s of an n x n x n matmul on random data (mean of 10 after 3 warm-ups)."""
    import torch
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        for _ in range(3):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / 10
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return {"size": n, "tflops_per_s": round(2 * n ** 3 / seconds / 1e12, 2)}


def part_tests(plan: dict, rows: Rows) -> None:
    import xml.etree.ElementTree as ET
    deadline = time.monotonic() + float(os.environ.get("GPU_CHECK_PART_SECONDS", "600")) - 5
    has_timeout = subprocess.run([sys.executable, "-c", "import pytest_timeout"], capture_output=True).returncode == 0
    for index, run in enumerate(plan["pytest"]):
        later = len(plan["pytest"]) - 1 - index           # keep 25 s for each later run

        def one(run=run, later=later):
            with tempfile.TemporaryDirectory() as tmp:
                xml = Path(tmp) / "junit.xml"
                cmd = [sys.executable, "-m", "pytest", "-q", "--continue-on-collection-errors", f"--junitxml={xml}",
                       *run["args"]]
                if has_timeout:
                    cmd.append(f"--timeout={plan['pytest_timeout']}")
                seconds = max(5.0, deadline - time.monotonic() - 25 * later)
                try:
                    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds)
                except subprocess.TimeoutExpired as exc:
                    text = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else \
                        (exc.stdout or "")
                    sys.stdout.write(text[-20000:])
                    raise RuntimeError(f"pytest ran past its {seconds:.0f} s (the log has its output so far)") \
                        from None
                sys.stdout.write(proc.stdout[-20000:])
                sys.stderr.write(proc.stderr[-5000:])
                if not xml.exists():
                    raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}): "
                                       f"{(proc.stdout + proc.stderr).strip().splitlines()[-1:]}")
                counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
                failed = []
                for case in ET.parse(xml).getroot().iter("testcase"):
                    counts["tests"] += 1
                    for kind, counter in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
                        node = case.find(kind)
                        if node is None:
                            continue
                        counts[counter] += 1
                        if kind != "skipped":
                            message = (node.get("message") or node.text or kind).strip().splitlines() or [kind]
                            failed.append(f"{case.get('classname')}::{case.get('name')}: {message[0][:300]}")
                passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
                out = {**counts, "passed": passed, "exit_code": proc.returncode, "failed": failed,
                       "summary": (proc.stdout.strip().splitlines() or [""])[-1][:300]}
                if failed or proc.returncode != 0:
                    raise Reported(f"{counts['failures']} failed, {counts['errors']} errors "
                                   f"(pytest exit {proc.returncode})", out)
                return out
        rows.measure(run["name"], one, args=" ".join(run["args"]))


def _train_kwargs(spec: dict, device: str) -> dict:
    return {k: v for k, v in spec.items() if k != "name"} | {"device": device}


def _part_train(key: str):
    def part(plan: dict, rows: Rows) -> None:
        measure = _bench("train_step").measure
        for spec in plan[key]:
            rows.measure(spec["name"], lambda spec=spec: measure(**_train_kwargs(spec, plan["device"])))
            if spec.get("compile"):
                import torch
                torch._dynamo.reset()                     # frees the compiled graphs (and what they hold)
            _free_memory()
    return part


def part_sample(plan: dict, rows: Rows) -> None:
    bench = _bench("sample")
    spec = plan["sample"]
    model = bench.build(spec["model"], spec.get("resolution", 256), plan["device"], spec.get("model_overrides"))
    for run in spec["runs"]:
        rows.measure(run["name"], lambda run=run: bench.compare(
            model, batch=spec["batch"], sampler=run["sampler"], steps=run["steps"], cfg_scale=spec["cfg_scale"],
            interval=spec["interval"], compile=spec["compile"], warmup_steps=spec["warmup_steps"]))


class OutOfMemory(Exception):
    """A trial batch did not fit."""


def largest_batch(trial, capacity: float, probes=(8, 32), multiple: int = 8, retries: int = 3,
                  cap: int = 8192, on_prediction=None) -> dict:
    """The largest batch that fits in ``capacity`` bytes, from two probes and a verified prediction.

    Peak memory is linear in the batch (fixed: weights, gradients, optimiser and EMA; per image: activations), so
    two probes give the line, the line gives the prediction, and a trial at the prediction verifies it; each trial
    that runs out of memory shrinks the candidate by 10%.

    Args:
        trial: batch -> peak bytes of one training step at that batch; raises OutOfMemory when it does not fit.
        capacity: the bytes the peak may reach.
        on_prediction: called with the figures so far before the verifying trials (which may run long).
    Returns:
        ``batch`` (the largest verified batch, None if none was), the fitted line, the prediction and the trials.
    """
    (b1, b2), trials = probes, []
    p1, p2 = trial(b1), trial(b2)
    trials += [{"batch": b1, "peak_gib": round(p1 / 2 ** 30, 3)}, {"batch": b2, "peak_gib": round(p2 / 2 ** 30, 3)}]
    per_image = (p2 - p1) / (b2 - b1)
    if per_image <= 0:
        raise RuntimeError(f"peak memory did not grow from batch {b1} to {b2} ({p1} -> {p2} bytes)")
    fixed = p1 - per_image * b1
    predicted = int((capacity - fixed) / per_image)
    candidate = max(multiple, min(cap, predicted) // multiple * multiple)
    figures = {"predicted": predicted, "capped_at": cap if predicted > cap else None,
               "fixed_gib": round(fixed / 2 ** 30, 3), "per_image_mib": round(per_image / 2 ** 20, 3),
               "capacity_gib": round(capacity / 2 ** 30, 3)}
    if on_prediction is not None:
        on_prediction({**figures, "trials": list(trials)})
    fits = None
    for _ in range(retries):
        try:
            peak = trial(candidate)
        except OutOfMemory:
            trials.append({"batch": candidate, "peak_gib": None, "oom": True})
            candidate = max(multiple, int(candidate * 0.9) // multiple * multiple)
            continue
        trials.append({"batch": candidate, "peak_gib": round(peak / 2 ** 30, 3)})
        fits = candidate
        break
    return {"batch": fits, **figures, "trials": trials}


def _cpu_peak_reset() -> int:
    """Reset the process's peak resident set (Linux) and return the current one, in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_status_bytes("VmRSS")


def _proc_status_bytes(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _part_maxbatch(checkpointing: bool):
    def part(plan: dict, rows: Rows) -> None:
        import torch
        measure = _bench("train_step").measure
        spec = {k: v for k, v in plan["maxbatch"].items()
                if k not in ("probes", "multiple", "headroom", "retries", "cap", "cpu_capacity_mib")}
        mb = plan["maxbatch"]
        cuda = plan["device"] == "cuda"

        def trial(batch: int) -> int:
            kwargs = {"warmup": 1, "steps": 1, "dataset_batches": 1, **spec, "batch": batch,
                      "checkpointing": checkpointing, "device": plan["device"]}
            if not cuda:
                _cpu_peak_reset()
            try:
                out = measure(**kwargs)
            except RuntimeError as exc:                   # torch.OutOfMemoryError is one; cuBLAS says ALLOC_FAILED
                if "out of memory" in str(exc).lower() or "ALLOC_FAILED" in str(exc):
                    raise OutOfMemory(_one_line(exc)) from None
                raise
            finally:
                _free_memory()
            return out["peak_memory_bytes"] if cuda else _proc_status_bytes("VmHWM")

        if cuda:                                          # what is free once this process holds its context
            capacity = torch.cuda.mem_get_info()[0] * mb["headroom"]
        else:                                             # dry run: a pretend card of cpu_capacity_mib
            trial(min(mb["probes"]))                      # first imports and allocations, outside the probes
            capacity = _cpu_peak_reset() + mb["cpu_capacity_mib"] * 2 ** 20
        name = "xl2_checkpointing" if checkpointing else "xl2"
        info = {"model": mb["model"], "teacher": mb["teacher"], "checkpointing": checkpointing,
                "precision": mb["precision"]}

        def search():
            found = largest_batch(trial, capacity, tuple(mb["probes"]), mb["multiple"], mb["retries"], mb["cap"],
                                  on_prediction=lambda figures: rows.emit({"name": name + "_prediction", "ok": True,
                                                                           **info, **figures}))
            if found["batch"] is None:
                raise Reported(f"no batch fitted in {mb['retries']} trials below the prediction", found)
            return found
        rows.measure(name, search, **info)
    return part


PART_FUNCTIONS = {"env": part_env, "tests": part_tests, "train_xl": _part_train("train_xl"), "sample": part_sample,
                  "maxbatch": _part_maxbatch(False), "maxbatch_ckpt": _part_maxbatch(True),
                  "train_bl": _part_train("train_bl")}


def run_child(part: str, plan: dict, rows_path: str) -> int:
    """The child process: one part, its rows appended to ``rows_path``."""
    injected = plan.get("inject", {}).get(part)
    if injected == "fail":
        raise RuntimeError(f"injected failure in part {part!r} (--inject)")
    if injected == "hang":
        time.sleep(10 ** 6)
    PART_FUNCTIONS[part](plan, Rows(rows_path))
    return 0
