"""Benchmark sampling: the paper's settings, fast path against a straightforward float32 implementation.

    python bench/sample.py --model SiT-B/2 --batch 8 --sampler sde --steps 250 --cfg-scale 1.8 --interval 0 0.7
    python bench/sample.py --model SiT-XL/2 --batch 64 --sampler euler --steps 50

"baseline": float32 weights, the projector evaluated at every model call (as the reference code does), guidance
batch doubled at every step of the interval. "fast": ``repa.sample`` with bfloat16 weights (the projector is never
run; outside the guidance interval only the conditional half runs), optionally ``torch.compile``. Both use random
weights of the real architecture (timing does not depend on the values) and the same noise; the script prints
images/s of each and the largest difference between their outputs relative to the output scale.
"""
from __future__ import annotations

import argparse
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


def timed(fn, repeats: int = 1):
    fn()                                                  # warm-up (and compile)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) / repeats


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
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    import repa
    from repa.models import build_model, model_config
    torch.manual_seed(0)
    cfg = model_config(args.model, input_size=args.resolution // 8, encoder_depth=8 if "B" not in args.model else 4)
    model = build_model(cfg).to(args.device).eval()
    with torch.no_grad():                                 # leave the zero init so the outputs are informative
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    noise = torch.randn(args.batch, 4, cfg.input_size, cfg.input_size, device=args.device)
    labels = torch.randint(0, 1000, (args.batch,), device=args.device)
    common = dict(sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale,
                  guidance_interval=tuple(args.interval))

    def run(net):
        gens = [torch.Generator(args.device).manual_seed(i) for i in range(args.batch)]
        with torch.no_grad():
            return repa.sample(net, noise, labels, generator=gens, **common)

    baseline_net = ProjectingBaseline(model)
    base_out, base_s = timed(lambda: run(baseline_net))
    fast_net = build_model(cfg).to(args.device).eval()
    fast_net.load_state_dict(model.state_dict())
    fast_net = fast_net.to(torch.bfloat16)
    if args.compile:
        compiled = torch.compile(fast_net)
        compiled.config = fast_net.config
        fast_net = compiled
    fast_out, fast_s = timed(lambda: run(fast_net))
    rel = ((fast_out.float() - base_out.float()).abs().max() / base_out.float().abs().max()).item()
    print(json.dumps({
        "model": args.model, "batch": args.batch, "sampler": args.sampler, "steps": args.steps,
        "cfg_scale": args.cfg_scale, "interval": list(args.interval), "device": args.device if args.device == "cpu"
        else torch.cuda.get_device_name(), "threads": torch.get_num_threads(),
        "baseline_images_per_s": round(args.batch / base_s, 4), "fast_images_per_s": round(args.batch / fast_s, 4),
        "speedup": round(base_s / fast_s, 2), "max_rel_difference": round(rel, 4)}))


if __name__ == "__main__":
    main()
