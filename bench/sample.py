"""Benchmark sampling: the paper's settings, fast path against a straightforward float32 implementation.

    python bench/sample.py --model SiT-B/2 --batch 8 --sampler sde --steps 250 --cfg-scale 1.8 --interval 0 0.7
    python bench/sample.py --model SiT-XL/2 --batch 64 --sampler euler --steps 50

"baseline": float32 weights, the projector evaluated at every model call (as the reference code does), guidance
batch doubled at every step of the interval. "fast": ``repa.sample`` with bfloat16 weights (the projector is never
run; outside the guidance interval only the conditional half runs), optionally ``torch.compile``. Both use random
weights of the real architecture (timing does not depend on the values) and the same noise; the script prints
images/s of each and the largest difference between their outputs relative to the output scale. On a GPU the
float32 matmuls use TF32 as the reference's ``generate.py`` does by default (``--no-tf32`` for strict float32).

``build(...)`` and ``compare(...)`` are the same benchmark as functions (``bench/gpu_check.py`` calls them).
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch


class ProjectingBaseline(torch.nn.Module):
    """The straightforward implementation: float32, computes the projector outputs at every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, x, t, y):
        return self.model.forward_features(x, t, y, project=True).prediction


def timed(fn, warmup_fn=None, repeats: int = 1):
    """(output, seconds per call) of ``fn`` after one call of ``warmup_fn`` (default ``fn``; also compiles)."""
    (warmup_fn or fn)()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) / repeats


def build(model: str = "SiT-B/2", resolution: int = 256, device: str = "cpu", model_overrides: dict | None = None):
    """The float32 network of ``model`` on ``device`` with small random weights (not the zero init)."""
    from repa.models import build_model, model_config
    torch.manual_seed(0)
    cfg = model_config(model, **{"input_size": resolution // 8, "encoder_depth": 8 if "B" not in model else 4,
                                 **(model_overrides or {})})
    net = build_model(cfg).to(device).eval()
    with torch.no_grad():                                 # leave the zero init so the outputs are informative
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


def compare(model, *, batch: int = 8, sampler: str = "sde", steps: int = 250, cfg_scale: float = 1.8,
            interval=(0.0, 0.7), compile: bool = False, warmup_steps: int | None = None, tf32: bool = True) -> dict:
    """Images/s of the float32 baseline and the fast path on ``model``'s device, and their output difference.

    Args:
        warmup_steps: steps of the untimed warm-up run of each path (default: ``steps``); a few suffice to
            compile both batch shapes (conditional only and doubled for guidance).
        tf32: TF32 matmuls for the float32 baseline on a GPU (the reference's default).
    """
    import repa
    device = next(model.parameters()).device
    cfg = model.config
    noise = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, device=device)
    labels = torch.randint(0, cfg.num_classes, (batch,), device=device)
    common = dict(sampler=sampler, cfg_scale=cfg_scale, guidance_interval=tuple(interval))

    def run(net, n_steps=steps):
        gens = [torch.Generator(device).manual_seed(i) for i in range(batch)]
        with torch.no_grad():
            return repa.sample(net, noise, labels, generator=gens, steps=n_steps, **common)

    def paths(net):
        return timed(lambda: run(net), (lambda: run(net, warmup_steps)) if warmup_steps else None)

    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32 and device.type == "cuda"
    try:
        base_out, base_s = paths(ProjectingBaseline(model))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    fast_net = copy.deepcopy(model).to(torch.bfloat16)
    if compile:
        compiled = torch.compile(fast_net)
        compiled.config = fast_net.config
        fast_net = compiled
    fast_out, fast_s = paths(fast_net)
    rel = ((fast_out.float() - base_out.float()).abs().max() / base_out.float().abs().max()).item()
    return {
        "model": cfg.name, "batch": batch, "sampler": sampler, "steps": steps, "cfg_scale": cfg_scale,
        "interval": list(interval), "compile": compile, "baseline_tf32": tf32 and device.type == "cuda",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "baseline_s": round(base_s, 3), "fast_s": round(fast_s, 3),
        "baseline_images_per_s": round(batch / base_s, 4), "fast_images_per_s": round(batch / fast_s, 4),
        "speedup": round(base_s / fast_s, 2), "max_rel_difference": round(rel, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="SiT-B/2")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sampler", default="sde", choices=["euler", "heun", "sde"])
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--cfg-scale", type=float, default=1.8)
    ap.add_argument("--interval", type=float, nargs=2, default=(0.0, 0.7))
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                    help="TF32 matmuls for the float32 baseline on a GPU (the reference's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    model = build(args.model, args.resolution, args.device)
    print(json.dumps(compare(model, batch=args.batch, sampler=args.sampler, steps=args.steps,
                             cfg_scale=args.cfg_scale, interval=args.interval, compile=args.compile,
                             tf32=args.tf32)))


if __name__ == "__main__":
    main()
