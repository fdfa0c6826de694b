"""Benchmark one REPA training step through the real training loop (``repa.training.train``).

Prints step time, images/s, peak memory and, on GPUs, model-FLOPs utilisation (MFU) from the analytic count in
``repa/flops.py`` (3x SiT forward incl. projector + 1x teacher forward per image; peak = dense bf16 tensor-core
FLOP/s of the card). The teacher is the real architecture (transformers DINOv2 with the hub config, random
weights written to a temporary folder and loaded through ``repa.encoders.load_encoder``), or the token cache.

    python bench/train_step.py --model SiT-B/2 --batch 8 --teacher dinov2-vit-b --precision fp32
    python bench/train_step.py --model SiT-B/2 --batch 8 --teacher cache
    python bench/train_step.py --model SiT-B/2 --batch 8 --teacher none          # vanilla SiT step
    python bench/train_step.py --preset SiT-XL/2-REPA-256 --batch 256 --precision bf16 --compile   # on a GPU
    python bench/train_step.py --model SiT-B/2 --batch 4 --resolution 64 --teacher cache --objective repa-e

``--objective repa-e`` times REPA-E's step (``repa/e2e.py``): a VAE of the SD-VAE's architecture (diffusers
``AutoencoderKL``, random weights saved to a temporary folder) encodes and decodes the images and is updated with
its discriminator (L1 + KL + patch-GAN; LPIPS needs weight files, so ``perceptual=none``); the FLOP count and MFU
then cover the SiT and the teacher only and are left out.

``measure(...)`` is the same benchmark as a function (``bench/gpu_check.py`` calls it).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import tempfile
import time

import numpy as np
import torch

# Dense (no sparsity) bf16 tensor-core peak per card, from the vendors' datasheets; the first matching name wins,
# so the PCIe/NVL parts (lower clocks and power) come before the SXM parts of the same name.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12), ("H100", 989e12),
             ("H200", 989e12), ("A100", 312e12))
DINOV2_SIZES = {"dinov2-vit-s": (384, 12, 6), "dinov2-vit-b": (768, 12, 12), "dinov2-vit-l": (1024, 24, 16)}
TINY_TEACHER = (32, 2, 2)                                  # width, depth, heads of the --tiny teacher


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the card called ``device_name`` (None: not in the table)."""
    return next((peak for key, peak in PEAK_BF16 if key in device_name), None)


def dinov2_folder(name: str, tiny: bool = False) -> str:
    """A transformers DINOv2 of the hub architecture (or a tiny one) with random weights, saved to a temp folder."""
    from transformers import Dinov2Config, Dinov2Model
    width, depth, heads = TINY_TEACHER if tiny else DINOV2_SIZES[name]
    cfg = Dinov2Config(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, image_size=518,
                       patch_size=14)
    folder = tempfile.mkdtemp(prefix="bench-dinov2-")
    Dinov2Model(cfg).save_pretrained(folder)
    return folder


def sd_vae_folder() -> str:
    """A diffusers AutoencoderKL of the SD-VAE's architecture (f8, 4 latent channels) with random weights, saved
    to a temporary folder (REPA-E's step encodes, decodes and trains it)."""
    from diffusers import AutoencoderKL
    from repa.autoencoder_repae import diffusers_config
    vae = AutoencoderKL(**diffusers_config("f8d4"))                      # the SD-VAE's architecture
    folder = tempfile.mkdtemp(prefix="bench-vae-")
    vae.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def final_checkpoint_skipped():
    """The loop saves a checkpoint at its last step (GBs for the big models, never timed): skip writing it."""
    import repa.training as loop
    save = getattr(loop, "atomic_torch_save", None)
    if save is None:                                      # the loop changed: let it write (correct, only slower)
        yield
        return
    loop.atomic_torch_save = lambda *args, **kwargs: None
    try:
        yield
    finally:
        loop.atomic_torch_save = save


def measure(model: str = "SiT-B/2", batch: int = 8, *, resolution: int = 256, teacher: str = "dinov2-vit-b",
            precision: str = "fp32", compile: bool = False, fused: bool = True, checkpointing: bool = False,
            accum: int = 1, warmup: int = 2, steps: int = 5, device: str | None = None, encoder_depth: int | None = None,
            model_overrides: dict | None = None, tiny_teacher: bool = False, dataset_batches: int = 4,
            write_checkpoint: bool = False, objective: str = "interpolant") -> dict:
    """Time ``steps`` training steps after ``warmup`` ones; returns the figures the CLI prints.

    Args:
        teacher: an encoder name (live teacher, random weights), 'cache' (cached DINOv2-B tokens) or 'none' (vanilla).
        model_overrides: ModelConfig field overrides (the GPU check's dry run uses tiny models).
        tiny_teacher: a 2-block, 32-wide DINOv2 instead of the hub size (dry runs).
        dataset_batches: the in-memory dataset holds this many batches (the loader cycles over it).
        write_checkpoint: let the loop write its final checkpoint (untimed; off by default).
        objective: 'interpolant' (REPA / vanilla) or 'repa-e' (the VAE tuned end to end; needs a teacher).
    """
    from repa.config import DataConfig, ObjectiveConfig, OptimConfig, TrainConfig
    from repa.data.memory import ArrayDataset
    from repa.flops import repa_train_step_flops
    from repa.models import model_config

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    depth = encoder_depth or (4 if "B" in model else 8)
    latent = resolution // 8
    use_teacher = teacher != "none"
    live = teacher not in ("none", "cache")
    e2e = objective == "repa-e"
    if e2e and not use_teacher:
        raise SystemExit("--objective repa-e aligns with a teacher: pass --teacher NAME or --teacher cache")
    enc_name = "dinov2-vit-b" if teacher == "cache" else teacher
    enc_dim = TINY_TEACHER[0] if tiny_teacher else DINOV2_SIZES.get(enc_name, (768,))[0]
    mcfg = model_config(model, **{"input_size": latent, "in_channels": 4, "encoder_depth": depth,
                                  "encoder_dims": (enc_dim,), **(model_overrides or {})})
    n = batch * dataset_batches
    rng = np.random.default_rng(0)
    extra = {"latent_mean": rng.standard_normal((n, 4, latent, latent), dtype=np.float32),
             "latent_std": np.full((n, 4, latent, latent), 0.1, dtype=np.float32)}
    shape = (n, 3, resolution, resolution)             # read only by a live teacher
    images = rng.integers(0, 255, shape, dtype=np.uint8) if live or e2e else np.zeros(shape, dtype=np.uint8)
    if teacher == "cache":
        key = f"tokens:{enc_name}@{resolution}/{mcfg.grid_size}"
        extra[key] = rng.standard_normal((n, mcfg.num_tokens, enc_dim), dtype=np.float32).astype(np.float16)
    dataset = ArrayDataset(images, np.zeros(n, dtype=np.int64), num_classes=1000, **extra)
    weights = (dinov2_folder(enc_name, tiny_teacher),) if live else ()
    vae_dir = sd_vae_folder() if e2e else None
    total = warmup + steps
    cfg = TrainConfig(model=mcfg, objective=ObjectiveConfig(kind=objective, proj_coeff=0.5 if use_teacher else 0.0),
                      optim=OptimConfig(fused=fused), data=DataConfig(resolution=resolution, num_workers=2),
                      encoders=(enc_name,), encoder_weights=weights, run_dir=tempfile.mkdtemp(prefix="bench-run-"),
                      global_batch_size=batch, grad_accum_steps=accum, max_steps=total,
                      precision=precision, compile=compile, activation_checkpointing=checkpointing,
                      log_every=1, ckpt_every=10 ** 9, tensorboard=False)
    if e2e:
        from repa.e2e_config import EndToEndConfig
        cfg = dataclasses.replace(cfg, e2e=EndToEndConfig(vae=vae_dir, perceptual="none"))
    from repa.training import train
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        encoders = None                                   # the loop loads the configured teacher
        if tiny_teacher and use_teacher:                  # narrower than the name's registry width: pass it in
            from repa.encoders import load_encoder
            encoders = [None if teacher == "cache" else
                        load_encoder(enc_name, resolution=resolution, token_grid=mcfg.grid_size, weights=weights[0],
                                     device=device)]
        with contextlib.nullcontext() if write_checkpoint else final_checkpoint_skipped():
            train(cfg, dataset=dataset, encoders=encoders, device=str(device), progress=False)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in open(f"{cfg.run_dir}/metrics.jsonl")]
    finally:                                              # the run's final checkpoint is GBs for the big models
        for folder in (cfg.run_dir, *weights, *([vae_dir] if e2e else [])):
            shutil.rmtree(folder, ignore_errors=True)
    timed = [1.0 / r["steps_per_s"] for r in records[warmup:]]       # one record per step: the timed ones
    step_s = sum(timed) / len(timed)
    # (the tiny dry-run teacher is left out of the count: repa/flops.py knows the hub sizes only)
    flops = repa_train_step_flops(mcfg, batch, enc_name if live and not tiny_teacher else None, projector=use_teacher)
    out = {"model": model, "objective": objective, "batch": batch, "teacher": teacher, "precision": precision,
           "compile": compile, "fused": fused, "checkpointing": checkpointing,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
           f"cpu ({torch.get_num_threads()} threads)", "step_s": round(step_s, 4),
           "step_s_min_max": [round(min(timed), 4), round(max(timed), 4)], "timed_steps": len(timed),
           "images_per_s": round(batch / step_s, 2), "tflops_per_s": None if e2e else round(flops / step_s / 1e12, 3),
           "wall_s_incl_setup": round(wall, 1)}
    if device.type == "cpu":                              # the process's peak resident memory, setup included
        import resource
        out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
        out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
        peak = peak_bf16_flops(torch.cuda.get_device_name(device))
        if peak and not e2e:
            out["mfu"] = round(flops / step_s / peak, 4)
    return out


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
    ap.add_argument("--objective", default="interpolant", choices=["interpolant", "repa-e"],
                    help="repa-e: REPA-E's step, the VAE (SD-VAE architecture, random weights) tuned end to end")
    args = ap.parse_args()

    depth = None
    if args.preset:
        from repa.presets import get_preset
        preset = get_preset(args.preset)
        if preset.model.space != "latent":
            raise SystemExit(f"{args.preset} is a pixel-space preset; this benchmark is for latent models "
                             "(e.g. SiT-XL/2-REPA-256)")
        args.model, args.resolution, depth = preset.model.name, preset.data.resolution, preset.model.encoder_depth
        args.precision = args.precision or preset.precision
    out = measure(args.model, args.batch, resolution=args.resolution, teacher=args.teacher,
                  precision=args.precision or "fp32", compile=args.compile, fused=args.fused,
                  checkpointing=args.checkpointing, accum=args.accum, warmup=args.warmup, steps=args.steps,
                  device=args.device, encoder_depth=depth, objective=args.objective)
    out.pop("peak_memory_bytes", None)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
