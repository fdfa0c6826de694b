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
``compare``) and the tests; this file only plans, times and reports them; the
measurements themselves are in ``bench/gpu_check_parts.py``.
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


sys.path.insert(0, str(Path(__file__).resolve().parent))      # the parts module beside this file
from gpu_check_parts import OutOfMemory, largest_batch, run_child  # noqa: E402  (OutOfMemory, largest_batch: API)

__all__ = ["OutOfMemory", "largest_batch", "check_targets", "main"]


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
