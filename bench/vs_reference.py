"""Side by side in one run: the reference REPA code against repa, on the same machine.

Needs a checkout of the reference code and timm (neither is a dependency of repa; nothing of it is copied here):

    git clone https://github.com/sihyun-yu/REPA /tmp/REPA && pip install timm
    python bench/vs_reference.py step --reference-repo /tmp/REPA --model SiT-B/2 --batch 8
    python bench/vs_reference.py sample --reference-repo /tmp/REPA --model SiT-B/2 --batch 2 --steps 250

``step`` -- reference step: the body of its ``train.py`` loop re-enacted around its own ``models/sit.py`` and ``loss.py``
(``SILoss``), float32 (``--mixed-precision no``), fused attention on (its default): posterior sample, teacher
forward under ``no_grad`` (its DINOv2 preprocessing: normalise, then bicubic resize to 224), label dropout,
``SILoss``, backward, ``clip_grad_norm_(1.0)``, AdamW, its per-parameter EMA update. The teacher is the same for
both sides: the DINOv2-B architecture from ``transformers`` with random weights (timing does not depend on the
values). repa's side is ``bench/train_step.py`` (the real training loop) run as a subprocess for each variant in
``--ours``. Prints one JSON line per measurement and a summary table.

``sample`` -- the reference SiT (eval mode, float32, random weights perturbed away from the zero init) is saved as a
reference-format checkpoint (``model``/``ema``/``args``/``steps``) and loaded back through ``repa.load_model``.
Then, with the same noise and labels: the reference's own ``euler_sampler`` against ``repa.sample`` (Euler ODE,
deterministic, so the outputs must agree: float32 to rounding, the fast path within bf16 tolerance), and the
reference's ``euler_maruyama_sampler`` against ``repa.sample(sampler="sde")`` in float32 and on the fast path
(timing only: the two draw their SDE noise differently). Guidance scale and interval as given (paper: SDE 250
steps, 1.8 on [0, 0.7]). Prints images/s of each and the largest output difference relative to the output scale.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def reference_step_time(repo: str, model_name: str, batch: int, warmup: int, steps: int, teacher: bool,
                        encoder_depth: int) -> float:
    """Seconds per step of the reference implementation (float32, CPU or the current CUDA device)."""
    sys.path.insert(0, repo)
    from loss import SILoss                       # the reference's loss.py
    from models.sit import SiT_models             # the reference's models/sit.py
    from transformers import Dinov2Config, Dinov2Model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = SiT_models[model_name](input_size=32, num_classes=1000, use_cfg=True, z_dims=[768],
                                   encoder_depth=encoder_depth, fused_attn=True, qk_norm=False).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    loss_fn = SILoss(prediction="v", path_type="linear", weighting="uniform")
    encoder = Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                       image_size=518, patch_size=14)).to(device).eval() if teacher else None
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    scale = torch.full((1, 4, 1, 1), 0.18215, device=device)
    raw = torch.randint(0, 255, (batch, 3, 256, 256), dtype=torch.uint8, device=device)
    moments = torch.randn(batch, 8, 32, 32, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
        drop = torch.rand(batch, device=device) < 0.1
        labels = torch.where(drop, 1000, y)
        with torch.no_grad():
            mu, sd = moments.chunk(2, dim=1)
            x = (mu + sd * torch.randn_like(mu)) * scale
            if encoder is not None:
                img = torch.nn.functional.interpolate((raw / 255.0 - mean) / std, 224, mode="bicubic")
                zs = [encoder(pixel_values=img).last_hidden_state[:, 1:]]
            else:
                zs = [torch.zeros(batch, 256, 768, device=device)]
        denoise, proj = loss_fn(model, x, dict(y=labels), zs=zs)
        loss = denoise.mean() + 0.5 * proj.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            ema_params = dict(ema.named_parameters())
            for name, p in model.named_parameters():
                ema_params[name].mul_(0.9999).add_(p.data, alpha=1 - 0.9999)
        return loss

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def ours(model_name: str, batch: int, variant: str, warmup: int, steps: int) -> dict:
    teacher, precision = variant.split(":")
    cmd = [sys.executable, os.path.join(HERE, "train_step.py"), "--model", model_name, "--batch", str(batch),
           "--teacher", teacher, "--precision", precision, "--warmup", str(warmup), "--steps", str(steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def perturbed_reference_sit(repo: str, model_name: str, device) -> torch.nn.Module:
    sys.path.insert(0, repo)
    from models.sit import SiT_models             # the reference's models/sit.py
    torch.manual_seed(0)
    net = SiT_models[model_name](input_size=32, num_classes=1000, use_cfg=True, z_dims=[768],
                                 encoder_depth=encoder_depth(model_name), fused_attn=True, qk_norm=False)
    with torch.no_grad():                         # leave the zero init so that the outputs are informative
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net.to(device).eval().requires_grad_(False)


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def compare_sampling(repo: str, args) -> list[tuple[str, float, float | None]]:
    import repa
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ref = perturbed_reference_sit(repo, args.model, device)
    import samplers as ref_samplers               # the reference's samplers.py
    path = os.path.join(tempfile.mkdtemp(prefix="vs-reference-"), "reference.pt")
    state = ref.state_dict()
    torch.save({"model": state, "ema": state, "opt": {}, "steps": 0,
                "args": argparse.Namespace(model=args.model, encoder_depth=encoder_depth(args.model),
                                           num_classes=1000, cfg_prob=0.1, enc_type="dinov2-vit-b",
                                           resolution=256, qk_norm=False, fused_attn=True)}, path)
    ours = repa.load_model(path, device=device).model   # the released-checkpoint path
    fast = repa.load_model(path, device=device).model.to(torch.bfloat16)
    shutil.rmtree(os.path.dirname(path))
    if args.compile:
        compiled = torch.compile(fast)
        compiled.config = fast.config
        fast = compiled
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(args.batch, 4, 32, 32, generator=gen).to(device)
    labels = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)
    low, high = args.interval
    ref_kw = dict(cfg_scale=args.cfg_scale, guidance_low=low, guidance_high=high)
    our_kw = dict(cfg_scale=args.cfg_scale, guidance_interval=(low, high))

    def ours_run(net, sampler, steps):
        gens = [torch.Generator(device).manual_seed(i) for i in range(args.batch)]
        with torch.no_grad():
            return repa.sample(net, noise, labels, sampler=sampler, steps=steps, generator=gens, **our_kw).float()

    def rel(a, b):
        return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()

    rows = []
    if args.compile:                              # compile outside the timed region
        ours_run(fast, "euler", 2)
    out_ref, t_ref = timed(lambda: ref_samplers.euler_sampler(ref, noise, labels, num_steps=args.euler_steps,
                                                              **ref_kw).float())
    rows.append((f"reference euler_sampler, {args.euler_steps} steps, fp32", t_ref, None))
    out, t = timed(lambda: ours_run(ours, "euler", args.euler_steps))
    rows.append((f"repa euler, {args.euler_steps} steps, fp32", t, rel(out, out_ref)))
    out, t = timed(lambda: ours_run(fast, "euler", args.euler_steps))
    rows.append((f"repa euler, {args.euler_steps} steps, fast path", t, rel(out, out_ref)))
    torch.manual_seed(2)
    _, t_ref = timed(lambda: ref_samplers.euler_maruyama_sampler(ref, noise, labels, num_steps=args.steps,
                                                                 **ref_kw))
    rows.append((f"reference euler_maruyama_sampler, {args.steps} steps, fp32", t_ref, None))
    _, t = timed(lambda: ours_run(ours, "sde", args.steps))
    rows.append((f"repa sde, {args.steps} steps, fp32", t, None))
    _, t = timed(lambda: ours_run(fast, "sde", args.steps))
    rows.append((f"repa sde, {args.steps} steps, fast path", t, None))
    return rows


def encoder_depth(model_name: str) -> int:
    return 4 if "B" in model_name else 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["step", "sample"])
    ap.add_argument("--reference-repo", required=True, help="a checkout of github.com/sihyun-yu/REPA")
    ap.add_argument("--model", default="SiT-B/2", choices=["SiT-B/2", "SiT-L/2", "SiT-XL/2"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="step: warm-up steps")
    ap.add_argument("--steps", type=int, default=5, help="step: timed steps; sample: SDE steps (paper: 250)")
    ap.add_argument("--ours", nargs="+", default=["dinov2-vit-b:fp32", "cache:fp32", "cache:bf16"],
                    help="step: repa variants as TEACHER:PRECISION (teacher: dinov2-vit-b, cache or none)")
    ap.add_argument("--euler-steps", type=int, default=50, help="sample: Euler ODE steps (paper: 50)")
    ap.add_argument("--cfg-scale", type=float, default=1.8, help="sample: guidance scale")
    ap.add_argument("--interval", type=float, nargs=2, default=(0.0, 0.7), help="sample: guidance interval")
    ap.add_argument("--compile", action="store_true", help="sample: torch.compile the fast path")
    args = ap.parse_args()
    repo = os.path.abspath(args.reference_repo)
    for needed in ("loss.py", "samplers.py", os.path.join("models", "sit.py")):
        if not os.path.isfile(os.path.join(repo, needed)):
            sys.exit(f"{repo} is not a checkout of the reference code ({needed} is missing); "
                     "clone it with: git clone https://github.com/sihyun-yu/REPA")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    if args.what == "sample":
        rows = compare_sampling(repo, args)
        print(f"\n{args.model}, batch {args.batch}, guidance {args.cfg_scale} on {list(args.interval)}, {device}")
        print("| sampler | images/s | max difference to the reference (rel.) |\n|---|---:|---:|")
        for name, s, diff in rows:
            print(f"| {name} | {args.batch / s:.4f} | {'' if diff is None else f'{diff:.1e}'} |")
        return
    rows = []
    ref = reference_step_time(repo, args.model, args.batch, args.warmup, args.steps, True,
                              encoder_depth(args.model))
    rows.append(("reference, teacher live, fp32", ref))
    print(json.dumps({"impl": "reference", "teacher": "dinov2-vit-b", "precision": "fp32", "step_s": round(ref, 3)}),
          flush=True)
    for variant in args.ours:
        r = ours(args.model, args.batch, variant, args.warmup, args.steps)
        print(json.dumps({"impl": "repa", **r}), flush=True)
        rows.append((f"repa, teacher {variant.split(':')[0]}, {variant.split(':')[1]}", r["step_s"]))
    print(f"\n{args.model}, batch {args.batch}, {device}, {args.steps} timed steps after {args.warmup} warm-up")
    print("| implementation | s/step | vs reference |\n|---|---:|---:|")
    for name, s in rows:
        print(f"| {name} | {s:.2f} | {ref / s:.2f}x |")


if __name__ == "__main__":
    main()
