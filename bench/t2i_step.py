"""One MMDiT + REPA training step (text-to-image) side by side: the reference code against repa, same inputs.

Needs a checkout of the reference code and einops (neither is a dependency of repa; nothing of it is copied here):

    git clone https://github.com/sihyun-yu/REPA /tmp/REPA && pip install einops
    python bench/t2i_step.py --reference-repo /tmp/REPA --depth 12 --batch 8

Reference step: the body of ``train_t2i.py``'s loop around its own ``models/mmdit.py`` and ``loss.py`` (``SILoss``),
float32: posterior sample of the latent moments, caption dropout to the empty context with p = 0.1 (its
``CFGDataset``), ``SILoss`` with ``context=``, backward, ``clip_grad_norm_(1.0)``, AdamW, its per-parameter EMA update.
The teacher tokens are given (random, 256 x 768) on both sides, so only the network's step is compared. repa's step
is the real training loop (``repa.training.train``) on an in-memory captioned dataset with a token cache of the same
shape: caption draw, dropout, posterior sample, loss, backward, clipping, fused AdamW, EMA, and its logging.
Prints one JSON line per side and the ratio.
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


def reference_step_s(repo: str, depth: int, batch: int, warmup: int, steps: int, encoder_depth: int) -> float:
    """Seconds per step of the reference's text-to-image step (float32, CPU or the current CUDA device)."""
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


def repa_step_s(depth: int, batch: int, warmup: int, steps: int, encoder_depth: int) -> float:
    """Seconds per step of repa's training loop on the same shapes (mean of the timed steps' logged rates)."""
    from repa.config import DataConfig, ObjectiveConfig, TrainConfig
    from repa.data.memory import TextArrayDataset
    from repa.models import model_config
    from repa.training import train

    n, rng = batch * 4, np.random.default_rng(0)
    mcfg = model_config("MMDiT-d12/2", depth=depth, hidden_size=32 * depth, num_heads=depth, input_size=32,
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
    timed = [1.0 / r["steps_per_s"] for r in records[warmup:]]
    return sum(timed) / len(timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-repo", required=True)
    ap.add_argument("--depth", type=int, default=12, help="MMDiT depth (the reference's hidden 32 x depth)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--encoder-depth", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reference-first", action="store_true", help="time the reference side first (order check)")
    args = ap.parse_args()
    shape = dict(depth=args.depth, batch=args.batch, warmup=args.warmup, steps=args.steps,
                 encoder_depth=args.encoder_depth)
    if args.reference_first:
        ref, ours = reference_step_s(args.reference_repo, **shape), repa_step_s(**shape)
    else:
        ours, ref = repa_step_s(**shape), reference_step_s(args.reference_repo, **shape)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    for name, value in (("reference", ref), ("repa", ours)):
        print(json.dumps({"implementation": name, **shape, "device": device, "step_s": round(value, 3)}))
    print(f"repa vs reference: {ref / ours:.2f}x ({ref:.2f} s -> {ours:.2f} s per step)")


if __name__ == "__main__":
    main()
