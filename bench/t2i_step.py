"""One MMDiT + REPA training step (text-to-image) side by side: the reference code against repa, same inputs.

Needs a checkout of the reference code and einops (neither is a dependency of repa; nothing of it is copied here):

    git clone https://github.com/sihyun-yu/REPA /tmp/REPA && pip install einops
    python bench/t2i_step.py --reference-repo /tmp/REPA --depth 12 --batch 8

Reference step: the body of ``train_t2i.py``'s loop around its own ``models/mmdit.py`` and ``loss.py`` (``SILoss``),
float32: posterior sample of the latent moments, caption dropout to the empty context with p = 0.1 (its
``CFGDataset``), ``SILoss`` with ``context=``, backward, ``clip_grad_norm_(1.0)``, AdamW, its per-parameter EMA update.
The teacher tokens are given (random, 256 x 768) on both sides, so only the network's step is compared. repa's step
is made of the pieces its training loop runs (``repa_step``); the two take turns step by step, so that the load of a
shared machine falls on both alike. ``--loop`` also times the real training loop (``repa.training.train``) on an
in-memory captioned dataset with a token cache of the same shape (caption draw, loader, logging included), after
the others. Prints one JSON line per implementation (every timed step, their mean and minimum) and the ratio of
the fastest steps.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

L, CONTEXT = 77, 768          # CLIP ViT-L/14 caption tokens


def reference_step(repo: str, depth: int, batch: int, encoder_depth: int):
    """The reference's text-to-image training step as a function (float32, CPU or the current CUDA device)."""
    sys.path.insert(0, repo)
    from loss import SILoss
    from models.mmdit import MMDiT

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = MMDiT(input_size=32, depth=depth, z_dims=[768], encoder_depth=encoder_depth).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    loss_fn = SILoss(prediction="v", path_type="linear", weighting="uniform")
    scale = torch.full((1, 4, 1, 1), 0.18215, device=device)
    moments = torch.randn(batch, 8, 32, 32, device=device)
    contexts, empty = torch.randn(batch, L, CONTEXT, device=device), torch.randn(L, CONTEXT, device=device)
    zs = [torch.randn(batch, 256, 768, device=device)]

    def step():
        drop = (torch.rand(batch, device=device) < 0.1).view(-1, 1, 1)
        context = torch.where(drop, empty, contexts)
        with torch.no_grad():
            mu, logvar = moments.chunk(2, dim=1)
            x = (mu + torch.exp(0.5 * logvar.clamp(-30, 20)) * torch.randn_like(mu)) * scale
        denoise, proj = loss_fn(model, x, dict(context=context), zs=zs)
        (denoise.mean() + 0.5 * proj.mean()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.mul_(0.9999).add_(p.data, alpha=1 - 0.9999)
    return step


def repa_step(depth: int, batch: int, encoder_depth: int):
    """repa's training step as a function, from the pieces the loop runs (``repa.training._train_loop``): the caption
    dropout of ``TextContext`` and the posterior sample from named streams, the objective's loss through
    ``forward_features``, backward, clipping, fused AdamW (the training default), the EMA as one foreach lerp."""
    from repa.autoencoder import sample_latents
    from repa.conditions import TextContext
    from repa.config import ObjectiveConfig
    from repa.models import build_model, model_config
    from repa.objectives import repa_loss, step_generator

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net = build_model(model_config("MMDiT-12x384/2", depth=depth, hidden_size=32 * depth, num_heads=depth,
                                   encoder_depth=encoder_depth, encoder_dims=(768,))).to(device).train()
    ema = copy.deepcopy(net).requires_grad_(False)
    params, ema_params = list(net.parameters()), list(ema.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=True)
    mean, std = torch.randn(batch, 4, 32, 32, device=device), torch.full((batch, 4, 32, 32), 0.1, device=device)
    contexts = torch.randn(batch, L, CONTEXT, device=device)
    condition = TextContext(0.1).bind(torch.randn(L, CONTEXT))
    zs = [torch.randn(batch, 256, 768, device=device)]
    counter = iter(range(10 ** 9))

    def step():
        k = next(counter)
        gen = step_generator(0, k, "diffusion", device)
        t, noise = torch.rand(batch, generator=gen, device=device), torch.randn(batch, 4, 32, 32, generator=gen,
                                                                                device=device)
        x0 = sample_latents(mean, std, eps=torch.randn(mean.shape, generator=step_generator(0, k, "posterior"),
                                                       device=device))
        cond = condition.drop(contexts, torch.rand(batch, generator=step_generator(0, k, "condition"), device=device))
        repa_loss(net.forward_features, x0, cond, zs, ObjectiveConfig(), t=t, noise=noise).total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - 0.9999)
    return step


def interleaved(steps_by_name: dict, warmup: int, steps: int) -> dict[str, list[float]]:
    """Seconds of each timed step, the implementations taking turns step by step (a shared machine's load then
    falls on both alike)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for step in steps_by_name.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def repa_loop_step_s(depth: int, batch: int, warmup: int, steps: int, encoder_depth: int) -> list[float]:
    """Seconds of each timed step of repa's whole training loop on the same shapes (the logged per-step rates)."""
    from repa.config import DataConfig, ObjectiveConfig, TrainConfig
    from repa.data.memory import TextArrayDataset
    from repa.models import model_config
    from repa.training import train

    n, rng = batch * 4, np.random.default_rng(0)
    mcfg = model_config("MMDiT-12x384/2", depth=depth, hidden_size=32 * depth, num_heads=depth, input_size=32,
                        encoder_depth=encoder_depth, encoder_dims=(768,))
    key = f"tokens:dinov2-vit-b@256/{mcfg.grid_size}"
    dataset = TextArrayDataset(np.zeros((n, 3, 256, 256), np.uint8), rng.standard_normal((n, L, CONTEXT), np.float32),
                               np.ones(n, np.int64), rng.standard_normal((L, CONTEXT), np.float32),
                               latent_mean=rng.standard_normal((n, 4, 32, 32), np.float32),
                               latent_std=np.full((n, 4, 32, 32), 0.1, np.float32),
                               **{key: rng.standard_normal((n, 256, 768), np.float32).astype(np.float16)})
    cfg = TrainConfig(model=mcfg, objective=ObjectiveConfig(proj_coeff=0.5), data=DataConfig(resolution=256),
                      encoders=("dinov2-vit-b",), run_dir=tempfile.mkdtemp(prefix="bench-t2i-"),
                      global_batch_size=batch, max_steps=warmup + steps, log_every=1, ckpt_every=10 ** 9,
                      tensorboard=False)
    try:
        train(cfg, dataset=dataset, encoders=[None], progress=False)
        records = [json.loads(line) for line in open(f"{cfg.run_dir}/metrics.jsonl")]
    finally:
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
    return [1.0 / r["steps_per_s"] for r in records[warmup:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-repo", required=True)
    ap.add_argument("--depth", type=int, default=12, help="MMDiT depth (the reference's hidden 32 x depth)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--encoder-depth", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--loop", action="store_true", help="also time repa's whole training loop (after the others)")
    args = ap.parse_args()
    shape = dict(depth=args.depth, batch=args.batch, warmup=args.warmup, steps=args.steps,
                 encoder_depth=args.encoder_depth)
    size = dict(depth=args.depth, batch=args.batch, encoder_depth=args.encoder_depth)
    times = interleaved({"reference": reference_step(args.reference_repo, **size), "repa": repa_step(**size)},
                        args.warmup, args.steps)
    if args.loop:
        times["repa (whole loop)"] = repa_loop_step_s(**shape)
    ref, ours = times["reference"], times["repa"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    for name, per_step in times.items():
        print(json.dumps({"implementation": name, **shape, "device": device, "step_s_min": round(min(per_step), 3),
                          "step_s_mean": round(sum(per_step) / len(per_step), 3),
                          "steps_s": [round(t, 3) for t in per_step]}))
    # the fastest step of each: on a shared machine the others carry other processes' load
    print(f"repa vs reference (fastest step of each): {min(ref) / min(ours):.2f}x "
          f"({min(ref):.2f} s -> {min(ours):.2f} s per step)")


if __name__ == "__main__":
    main()
