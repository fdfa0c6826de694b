"""Benchmark one REPA training step through the real training loop (``repa.train.train``).

Prints step time, images/s, peak memory and, on GPUs, model-FLOPs utilisation (MFU) from the analytic count in
``repa/flops.py`` (3x SiT forward incl. projector + 1x teacher forward per image; peak = dense bf16 tensor-core
FLOP/s of the card). The teacher is the real architecture (transformers DINOv2 with the hub config, random
weights written to a temporary folder and loaded through ``repa.encoders.load_encoder``), or the token cache.

    python bench/train_step.py --model SiT-B/2 --batch 8 --teacher dinov2-vit-b --precision fp32
    python bench/train_step.py --model SiT-B/2 --batch 8 --teacher cache
    python bench/train_step.py --model SiT-B/2 --batch 8 --teacher none          # vanilla SiT step
    python bench/train_step.py --preset SiT-XL/2-REPA-256 --batch 256 --precision bf16 --compile   # on a GPU
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time

import numpy as np
import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def dinov2_folder(name: str) -> str:
    from transformers import Dinov2Config, Dinov2Model
    sizes = {"dinov2-vit-s": (384, 12, 6), "dinov2-vit-b": (768, 12, 12), "dinov2-vit-l": (1024, 24, 16)}
    width, depth, heads = sizes[name]
    cfg = Dinov2Config(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, image_size=518,
                       patch_size=14)
    folder = tempfile.mkdtemp(prefix="bench-dinov2-")
    Dinov2Model(cfg).save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None,
                    help="take the model, resolution, encoder depth and precision from a latent-space preset "
                         "(`repa presets`), e.g. SiT-XL/2-REPA-256; the flags below override the precision")
    ap.add_argument("--model", default="SiT-B/2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--teacher", default="dinov2-vit-b", help="an encoder name, 'cache' or 'none'")
    ap.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                    help="default: the preset's, else fp32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                    help="fused AdamW (the training default; --no-fused for the for-loop AdamW)")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    from repa.config import DataConfig, ObjectiveConfig, OptimConfig, TrainConfig
    from repa.data.memory import ArrayDataset
    from repa.flops import repa_train_step_flops
    from repa.models import model_config
    from repa.train import train

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    depth = min(8, 4 if "B" in args.model else 8)
    if args.preset:
        from repa.presets import get_preset
        preset = get_preset(args.preset)
        if preset.model.space != "latent":
            raise SystemExit(f"{args.preset} is a pixel-space preset; this benchmark is for latent models "
                             "(e.g. SiT-XL/2-REPA-256)")
        args.model, args.resolution, depth = preset.model.name, preset.data.resolution, preset.model.encoder_depth
        args.precision = args.precision or preset.precision
    args.precision = args.precision or "fp32"
    latent = args.resolution // 8
    use_teacher = args.teacher != "none"
    enc_name = "dinov2-vit-b" if args.teacher == "cache" else args.teacher
    enc_dim = {"dinov2-vit-s": 384, "dinov2-vit-b": 768, "dinov2-vit-l": 1024}.get(enc_name, 768)
    mcfg = model_config(args.model, input_size=latent, in_channels=4, encoder_depth=depth, encoder_dims=(enc_dim,))
    n = args.batch * 4
    rng = np.random.default_rng(0)
    extra = {"latent_mean": rng.standard_normal((n, 4, latent, latent), dtype=np.float32),
             "latent_std": np.full((n, 4, latent, latent), 0.1, dtype=np.float32)}
    images = rng.integers(0, 255, (n, 3, args.resolution, args.resolution), dtype=np.uint8)
    if args.teacher == "cache":
        key = f"tokens:{enc_name}@{args.resolution}/{mcfg.grid_size}"
        extra[key] = rng.standard_normal((n, mcfg.num_tokens, enc_dim)).astype(np.float16)
    dataset = ArrayDataset(images, np.zeros(n, dtype=np.int64), num_classes=1000, **extra)
    weights = (dinov2_folder(enc_name),) if args.teacher not in ("none", "cache") else ()
    total = args.warmup + args.steps
    cfg = TrainConfig(model=mcfg, objective=ObjectiveConfig(proj_coeff=0.5 if use_teacher else 0.0),
                      optim=OptimConfig(fused=args.fused), data=DataConfig(resolution=args.resolution, num_workers=2),
                      encoders=(enc_name,), encoder_weights=weights, run_dir=tempfile.mkdtemp(prefix="bench-run-"),
                      global_batch_size=args.batch, grad_accum_steps=args.accum, max_steps=total,
                      precision=args.precision, compile=args.compile, activation_checkpointing=args.checkpointing,
                      log_every=1, ckpt_every=10 ** 9, tensorboard=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        train(cfg, dataset=dataset, device=str(device), progress=False)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in open(f"{cfg.run_dir}/metrics.jsonl")]
    finally:                                              # the run's final checkpoint is GBs for the big models
        for folder in (cfg.run_dir, *weights):
            shutil.rmtree(folder, ignore_errors=True)
    timed = [1.0 / r["steps_per_s"] for r in records[args.warmup:]]      # one record per step: the timed ones
    step_s = sum(timed) / len(timed)
    flops = repa_train_step_flops(mcfg, args.batch, enc_name if args.teacher not in ("none", "cache") else None,
                                  projector=use_teacher)
    out = {"model": args.model, "batch": args.batch, "teacher": args.teacher, "precision": args.precision,
           "compile": args.compile, "device": torch.cuda.get_device_name() if device.type == "cuda" else
           f"cpu ({torch.get_num_threads()} threads)", "step_s": round(step_s, 4),
           "step_s_min_max": [round(min(timed), 3), round(max(timed), 3)], "timed_steps": len(timed),
           "images_per_s": round(args.batch / step_s, 2), "tflops_per_s": round(flops / step_s / 1e12, 3),
           "wall_s_incl_setup": round(wall, 1)}
    if device.type == "cpu":                              # the process's peak resident memory, setup included
        import resource
        out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        if peak:
            out["mfu"] = round(flops / step_s / peak, 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
