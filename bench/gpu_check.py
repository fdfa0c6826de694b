"""One prepared check of the CUDA path, sized to run as one command in at most 8 minutes on one H100/H200.

    bash bench/gpu_check.sh                      # on the GPU machine: report on stdout, JSON in $OUT when set
    bash bench/gpu_check.sh --dry-run            # CPU, tiny sizes, seconds: proves this script runs end to end
    bash bench/gpu_check.sh --parts sample,maxbatch --budget 240      # rerun some parts in a shorter slot

Parts, in priority order (docs/PERFORMANCE.md says what each measures):

    env            versions, the card, and the bf16 / TF32 matmul rate it reaches (the ceiling behind MFU)
    tests          the ``gpu``-marked tests (tests/test_cuda.py: model, objective, samplers, training with checkpoint
                   and bitwise resume on the GPU; tests/test_fast_path.py) and a slice of the CPU suite on CUDA
    train_xl       SiT-XL/2 training step: REPA with the token cache, the vanilla step, REPA with a live DINOv2-B
                   teacher (random weights), bf16 + fused AdamW, then the cached REPA step compiled as well
    sample         SiT-XL/2 sampling, SDE 250 steps and Euler 50 steps, guidance 1.8 on [0, 0.7], float32
                   (TF32, as the reference) against the fast path (bf16, no projector): images/s
    maxbatch       the largest per-GPU batch of a SiT-XL/2 REPA step that fits, without activation checkpointing
    maxbatch_ckpt  the same with activation checkpointing
    train_bl       SiT-B/2 and SiT-L/2: the three training steps of train_xl

Each part runs in its own process with its own time budget, cut to what is left of the whole budget; a part that
crashes is reported as 'error', one over its budget is killed and reported as 'timeout' (with the measurements it
finished), and the next part runs. Each measurement inside a part is caught on its own, so one failed measurement
leaves the others. The report is written after every part, so a command killed from outside still leaves one.

The calls into ``repa`` go through ``bench/train_step.py`` (``measure``), ``bench/sample.py`` (``build``,
``compare``) and the tests; this file only plans, times and reports them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = 1
STATUSES = ("ok", "failed", "error", "timeout", "skipped")

# Targets of the issue ("GPU: one prepared check"), checked on the measurements.
TARGETS = {
    "xl_repa_mfu": "SiT-XL/2 + REPA training in bf16 at 40% MFU or more",
    "xl_cache_overhead": "SiT-XL/2 REPA step with the token cache within 5% of the vanilla step",
    "sampling_speedup": "fast-path sampling at least 2x the float32 reference sampler",
}

# ---- plans: what each part measures, on the GPU and in the dry run -------------------------------------------------

FAST = {"precision": "bf16", "fused": True}                  # the fast path less compile (compile: own rows)


def _train_rows(model: str, batch: int, compiled: bool, **kw) -> list[dict]:
    tag = model.split("-")[1].replace("/", "").lower()      # SiT-XL/2 -> xl2
    rows = [{"name": f"{tag}_repa_cache", "model": model, "batch": batch, "teacher": "cache", **FAST, **kw},
            {"name": f"{tag}_vanilla", "model": model, "batch": batch, "teacher": "none", **FAST, **kw},
            {"name": f"{tag}_repa_live", "model": model, "batch": batch, "teacher": "dinov2-vit-b", **FAST, **kw}]
    if compiled:
        rows.append({"name": f"{tag}_repa_cache_compiled", "model": model, "batch": batch, "teacher": "cache",
                     **FAST, "compile": True, **kw})
    return rows


def gpu_plan() -> dict:
    steps = {"warmup": 3, "steps": 8}
    return {
        "mode": "gpu", "device": "cuda", "budget_s": 450,
        "budgets": {"env": 30, "tests": 130, "train_xl": 160, "sample": 110, "maxbatch": 70, "maxbatch_ckpt": 90,
                    "train_bl": 90},
        "min_part_s": 20,
        "matmul_size": 8192,
        "pytest": [{"name": "gpu_tests", "args": ["-m", "gpu", "tests"]},
                   {"name": "cpu_suite_on_cuda",       # train() picks CUDA by default: these run their loop there
                    "args": ["tests/test_train.py", "-k", "twenty_steps or kill_and_resume or accumulation "
                             "or fused_adamw"]}],
        "pytest_timeout": 120,
        "train_xl": _train_rows("SiT-XL/2", 64, compiled=True, **steps),
        "train_bl": _train_rows("SiT-B/2", 64, compiled=False, **steps) + _train_rows("SiT-L/2", 64, False, **steps),
        "sample": {"model": "SiT-XL/2", "batch": 64, "cfg_scale": 1.8, "interval": [0.0, 0.7], "compile": False,
                   "warmup_steps": 6, "runs": [{"name": "xl2_sde250", "sampler": "sde", "steps": 250},
                                               {"name": "xl2_euler50", "sampler": "euler", "steps": 50}]},
        "maxbatch": {"model": "SiT-XL/2", "teacher": "cache", "probes": [16, 64], "multiple": 8, "headroom": 0.96,
                     "retries": 3, "cap": 8192, **FAST},
    }


def dry_plan() -> dict:
    tiny = {"depth": 2, "hidden_size": 64, "num_heads": 2, "projector_dim": 64, "encoder_depth": 1}
    small = {"warmup": 1, "steps": 2, "resolution": 64, "model_overrides": tiny, "tiny_teacher": True,
             "dataset_batches": 1}
    return {
        "mode": "dry-run", "device": "cpu", "budget_s": 300,
        "budgets": {"env": 30, "tests": 90, "train_xl": 60, "sample": 60, "maxbatch": 60, "maxbatch_ckpt": 60,
                    "train_bl": 60},
        "min_part_s": 2,
        "matmul_size": 256,
        "pytest": [{"name": "gpu_tests", "args": ["-m", "gpu", "tests/test_cuda.py"]}],   # skip cleanly on CPU
        "pytest_timeout": 60,
        "train_xl": _train_rows("SiT-XL/2", 4, compiled=False, **small),
        "train_bl": _train_rows("SiT-B/2", 4, compiled=False, **small)[:1],
        "sample": {"model": "SiT-XL/2", "batch": 2, "cfg_scale": 1.8, "interval": [0.0, 0.7], "compile": False,
                   "warmup_steps": 2, "resolution": 64, "model_overrides": tiny,
                   "runs": [{"name": "xl2_sde", "sampler": "sde", "steps": 4},
                            {"name": "xl2_euler", "sampler": "euler", "steps": 3}]},
        "maxbatch": {"model": "SiT-XL/2", "teacher": "cache", "probes": [4, 64], "multiple": 1, "headroom": 1.0,
                     "retries": 3, "cap": 16, "cpu_capacity_mib": 64, **FAST, **{**small, "steps": 1}},
    }


PARTS = ("env", "tests", "train_xl", "sample", "maxbatch", "maxbatch_ckpt", "train_bl")


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


# ---- the parent: plan, run the parts under their budgets, report -------------------------------------------------

def run_part(part: str, plan: dict, timeout: float, log) -> dict:
    """Run one part in a child process (killed after ``timeout`` s); its status and rows."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        rows_path = f.name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", part, "--rows", rows_path,
           "--plan-json", json.dumps(plan)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GPU_CHECK_PART_SECONDS": str(int(timeout))}
    log.write(f"\n===== part {part} (budget {timeout:.0f} s) =====\n")
    log.flush()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    timed_out = False
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)               # the part and anything it started
        code = proc.wait()
    wall = time.monotonic() - start
    rows = []
    for line in Path(rows_path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:                                # a line cut short by the kill
            pass
    os.unlink(rows_path)
    if timed_out:
        status, note = "timeout", f"killed after its budget of {timeout:.0f} s"
    elif code != 0:
        status, note = "error", f"the part's process exited with {code}: {_log_tail(log.name, part)}"
    elif not rows:
        status, note = "error", "the part reported nothing"
    else:
        status, note = ("ok" if all(r.get("ok") for r in rows) else "failed"), None
    out = {"status": status, "wall_s": round(wall, 1), "budget_s": round(timeout), "rows": rows}
    if note:
        out["note"] = note
    return out


def _log_tail(path: str, part: str) -> str:
    """The last non-empty line the part wrote to the log (usually the exception)."""
    try:
        text = Path(path).read_text(errors="replace")
        section = text.rsplit(f"===== part {part} ", 1)[-1]
        lines = [ln for ln in section.splitlines()[1:] if ln.strip()]
        return lines[-1][:400] if lines else "(no output)"
    except OSError:
        return "(no log)"


def check_targets(parts: dict, judge: bool = True) -> dict:
    """Each target of the issue: the value measured, the rows it came from, met or not (None: not measured).

    ``judge=False`` (the dry run's tiny sizes on a CPU) leaves ``met`` None: the values say nothing there.
    """
    def rows(part):
        return {r["name"]: r for r in parts.get(part, {}).get("rows", []) if r.get("ok")}

    train, sample = rows("train_xl"), rows("sample")
    out = {}
    mfus = [(r.get("mfu"), name) for name, r in train.items() if "repa" in name and r.get("mfu") is not None]
    best = max(mfus, default=(None, None))
    out["xl_repa_mfu"] = {"value": best[0], "from": best[1], "met": None if best[0] is None else best[0] >= 0.40}
    if "xl2_repa_cache" in train and "xl2_vanilla" in train:
        overhead = train["xl2_repa_cache"]["step_s"] / train["xl2_vanilla"]["step_s"] - 1
        out["xl_cache_overhead"] = {"value": round(overhead, 4), "from": "xl2_repa_cache / xl2_vanilla",
                                    "met": overhead <= 0.05}
    else:
        out["xl_cache_overhead"] = {"value": None, "from": None, "met": None}
    speedups = [(r["speedup"], name) for name, r in sample.items() if "speedup" in r]
    worst = min(speedups, default=(None, None))
    out["sampling_speedup"] = {"value": worst[0], "from": worst[1], "met": None if worst[0] is None else worst[0] >= 2}
    for key, target in out.items():
        target["target"] = TARGETS[key]
        if not judge:
            target["met"] = None
    return out


def render(report: dict) -> str:
    """The compact text report."""
    lines = [f"repa gpu check ({report['mode']}): {report.get('gpu') or report.get('device')}, "
             f"{report['wall_s']:.0f} s of a {report['budget_s']} s budget"]
    for name, part in report["parts"].items():
        lines.append(f"[{part['status']:>7}] {name:<13} {part.get('wall_s', 0):6.1f} s"
                     + (f"  {part['note']}" if part.get("note") else ""))
        for row in part.get("rows", []):
            lines.append(f"    {'ok  ' if row.get('ok') else 'FAIL'} {row['name']:<26} {_figures(row)}")
    lines.append("targets:")
    for key, t in report["targets"].items():
        verdict = {True: "met", False: "NOT met", None: "not judged" if t["value"] is not None else "not measured"}[
            t["met"]]
        lines.append(f"    {verdict:<12} {t['target']}: {t['value']} ({t['from']})")
    return "\n".join(lines)


def _figures(row: dict) -> str:
    if not row.get("ok") and "error" in row and "failed" not in row:
        return row["error"]
    keys = {"tests": ("passed", "failures", "errors", "skipped"), "tflops_per_s": ("step_s", "images_per_s", "mfu",
            "tflops_per_s", "peak_memory_gib"), "speedup": ("baseline_images_per_s", "fast_images_per_s", "speedup",
            "max_rel_difference"), "trials": ("batch", "predicted", "fixed_gib", "per_image_mib"),
            "torch": ("torch", "cuda", "gpu", "missing_modules")}
    for marker, wanted in keys.items():
        if marker in row:
            text = " ".join(f"{k}={row[k]}" for k in wanted if row.get(k) is not None)
            if row.get("failed"):
                text += " | " + " | ".join(row["failed"][:5])
            return text
    return " ".join(f"{k}={v}" for k, v in row.items() if k not in ("name", "ok", "traceback"))[:200]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check that the script itself runs")
    ap.add_argument("--out", default=os.environ.get("OUT"),
                    help="folder for gpu_check.json and gpu_check.log (default: $OUT; else nothing is kept "
                         "but the text report)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {','.join(PARTS)}")
    ap.add_argument("--budget", type=float, default=None, help="seconds for all parts (GPU default 450)")
    ap.add_argument("--timeout", action="append", default=[], metavar="PART=SECONDS",
                    help="override one part's budget")
    ap.add_argument("--inject", action="append", default=[], metavar="PART=fail|hang",
                    help="make a part crash or hang (to check that the report survives it)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--rows", help=argparse.SUPPRESS)
    ap.add_argument("--plan-json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return run_child(args.child, json.loads(args.plan_json), args.rows)

    plan = dry_plan() if args.dry_run else gpu_plan()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown part(s) {unknown}; known: {', '.join(PARTS)}")
    for text in args.timeout:
        name, _, value = text.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = None
        if name not in PARTS or seconds is None:
            ap.error(f"--timeout {text!r}: expected PART=SECONDS with PART in {', '.join(PARTS)}")
        plan["budgets"][name] = seconds
    plan["inject"] = {}
    for text in args.inject:
        name, _, what = text.partition("=")
        if name not in PARTS or what not in ("fail", "hang"):
            ap.error(f"--inject {text!r}: expected PART=fail or PART=hang")
        plan["inject"][name] = what
    if args.budget:
        plan["budget_s"] = args.budget
    if not args.dry_run and not _cuda_visible():
        print("gpu_check: error: no CUDA device is visible here; run with --dry-run for the CPU check",
              file=sys.stderr)
        return 2

    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, log_path = out_dir / "gpu_check.json", out_dir / "gpu_check.log"
    start, deadline = time.monotonic(), time.monotonic() + plan["budget_s"]
    report = {"schema": SCHEMA, "mode": plan["mode"], "device": plan["device"], "budget_s": plan["budget_s"],
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "wall_s": 0.0,
              "parts": {}, "targets": {}, "plan": {k: v for k, v in plan.items() if k != "inject"},
              "injected": plan["inject"]}
    with open(log_path, "w") as log:
        for part in parts:
            left = deadline - time.monotonic()
            timeout = min(plan["budgets"][part], left)
            if timeout < plan["min_part_s"]:
                report["parts"][part] = {"status": "skipped", "wall_s": 0.0, "rows": [],
                                         "note": f"{left:.0f} s of the whole budget left"}
            else:
                report["parts"][part] = run_part(part, plan, timeout, log)
            if part == "env":
                env = next((r for r in report["parts"][part]["rows"] if r["name"] == "versions"), {})
                report["gpu"] = env.get("gpu")
            report["wall_s"] = round(time.monotonic() - start, 1)
            report["targets"] = check_targets(report["parts"], judge=plan["mode"] == "gpu")
            json_path.write_text(json.dumps(report, indent=1))
            print(f"gpu_check: {part}: {report['parts'][part]['status']} "
                  f"({report['parts'][part].get('wall_s', 0):.0f} s)", flush=True)
    print(render(report))
    print(f"gpu_check: report {json_path}, log {log_path}")
    return 0


def _cuda_visible() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"],
                           capture_output=True)
    return probe.returncode == 0


if __name__ == "__main__":
    sys.exit(main())
