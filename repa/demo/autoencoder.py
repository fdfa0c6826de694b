"""A small convolutional VAE trained inside the default job, so that the SiT works in a latent space as in the paper.

No pretrained image autoencoder ships in a package registry, so the default job trains its own on Fashion-MNIST
(about a minute on 2 CPU cores) and caches it. It follows the SD-VAE conventions of ``repa.autoencoder``: the
encoder gives posterior moments (mean, std) of 4-channel latents (28x28 -> 7x7, downsampling 4), the training input
is ``(mean + std * eps) * LATENT_SCALE`` and generated latents are divided by ``LATENT_SCALE`` before decoding. A
fixed multiplier, measured once after training, makes the scaled latents of the training set unit-variance, which is
what the SD-VAE's 0.18215 does for ImageNet latents.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from repa.autoencoder import LATENT_SCALE


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture and training of the small VAE."""
    in_channels: int = 1                      # image channels (Fashion-MNIST: 1)
    latent_channels: int = 4                  # latent channels at 7x7
    widths: tuple[int, int] = (32, 64)        # channels at full and half resolution; the 7x7 stage uses widths[1]
    steps: int = 800                          # training steps
    batch_size: int = 128                     # training batch size
    lr: float = 2e-3                          # AdamW peak learning rate (warm-up, cosine decay)
    kl_weight: float = 1e-4                   # per-pixel KL weight: a near-deterministic, smooth latent space
    seed: int = 0                             # initialisation and batch order


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1)


class TinyVAE(nn.Module):
    """Conv encoder (two stride-2 stages) to (mean, log-variance); conv decoder with nearest upsampling."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        c1, c2, z = cfg.widths[0], cfg.widths[1], cfg.latent_channels
        self.config = cfg
        self.encoder = nn.Sequential(
            _conv(cfg.in_channels, c1), nn.SiLU(), _conv(c1, c1, 2), nn.SiLU(),          # 28 -> 14
            _conv(c1, c2), nn.SiLU(), _conv(c2, c2, 2), nn.SiLU(),                       # 14 -> 7
            _conv(c2, c2), nn.SiLU(), nn.Conv2d(c2, 2 * z, 1))
        self.decoder = nn.Sequential(
            _conv(z, c2), nn.SiLU(), _conv(c2, c2), nn.SiLU(), nn.Upsample(scale_factor=2),
            _conv(c2, c1), nn.SiLU(), _conv(c1, c1), nn.SiLU(), nn.Upsample(scale_factor=2),
            _conv(c1, c1), nn.SiLU(), _conv(c1, cfg.in_channels))
        # raw latent = multiplier * network latent; set after training so that raw * LATENT_SCALE has unit variance
        self.register_buffer("multiplier", torch.ones(()))

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network-space posterior mean and log-variance of images in [-1, 1] (B, C, 28, 28) -> (B, z, 7, 7)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    @torch.no_grad()
    def encode_moments(self, images_uint8) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw posterior (mean, std) of uint8 images (B, C, H, W), the units ``sample_latents`` expects."""
        x = torch.as_tensor(images_uint8).float() / 127.5 - 1.0
        mean, logvar = self.moments(x)
        return mean * self.multiplier, torch.exp(0.5 * logvar) * self.multiplier

    @torch.no_grad()
    def decode(self, latents_scaled: torch.Tensor) -> torch.Tensor:
        """Model-space latents (already multiplied by ``LATENT_SCALE``) -> uint8 images (B, C, 28, 28)."""
        x = self.decoder(latents_scaled.float() / (LATENT_SCALE * self.multiplier))
        return torch.clamp(127.5 * (x + 1.0), 0, 255).to(torch.uint8)


def train_vae(images_uint8: np.ndarray, cfg: AutoencoderConfig, *, log=print) -> TinyVAE:
    """Train the VAE on uint8 images (N, C, 28, 28): L1 + L2 reconstruction + ``kl_weight`` KL, AdamW with a short
    warm-up and cosine decay, then set the latent multiplier from the training set's posterior means."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    vae = TinyVAE(cfg)
    images = torch.from_numpy(np.ascontiguousarray(images_uint8))
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        x = images[torch.randint(0, len(images), (cfg.batch_size,), generator=gen)].float() / 127.5 - 1.0
        mean, logvar = vae.moments(x)
        z = mean + torch.randn(mean.shape, generator=gen) * torch.exp(0.5 * logvar)
        rec = vae.decoder(z)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean() / x[0].numel()
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step % 200 == 0 or step == cfg.steps - 1):
            log(f"  autoencoder step {step + 1}/{cfg.steps}: reconstruction MSE {(rec - x).pow(2).mean().item():.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        sample = images[torch.randperm(len(images), generator=gen)[:4096]].float() / 127.5 - 1.0
        std = vae.moments(sample)[0].std().item()
    vae.multiplier.fill_(1.0 / (LATENT_SCALE * std))
    return vae


def save_vae(vae: TinyVAE, folder: str | os.PathLike) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``folder`` atomically (a temporary folder, then rename)."""
    from safetensors.torch import save_file
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(asdict(vae.config), indent=2))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp / "model.safetensors"))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def load_vae_folder(folder: str | os.PathLike) -> TinyVAE:
    """Load a VAE written by ``save_vae``."""
    from safetensors.torch import load_file
    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text())
    raw["widths"] = tuple(raw["widths"])
    vae = TinyVAE(AutoencoderConfig(**raw))
    vae.load_state_dict(load_file(str(folder / "model.safetensors")))
    return vae.eval().requires_grad_(False)


def reconstruction_error(vae: TinyVAE, images_uint8: np.ndarray) -> float:
    """Mean squared error in [-1, 1] units of decoding the posterior means of ``images_uint8``."""
    mean, _ = vae.encode_moments(images_uint8)
    rec = vae.decode(mean * LATENT_SCALE).float() / 127.5 - 1.0
    return F.mse_loss(rec, torch.as_tensor(images_uint8).float() / 127.5 - 1.0).item()
