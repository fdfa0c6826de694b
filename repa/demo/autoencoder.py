"""A small convolutional VAE trained inside the default job, so that the SiT works in a latent space as in the paper.

No pretrained image autoencoder ships in a package registry, so the default job trains its own on Fashion-MNIST
(a few minutes on 2 CPU cores) and caches it. It follows the SD-VAE conventions of ``repa.autoencoder``: the encoder
gives posterior moments (mean, std) of ``latent_channels``-channel latents at ``28 / factor`` resolution (default
28x28 -> 14x14x1), the training input is ``(mean + std * eps) * LATENT_SCALE`` and generated latents are divided by
``LATENT_SCALE`` before decoding. A fixed multiplier, measured once after training, makes the scaled latents of the
training set unit-variance, which is what the SD-VAE's 0.18215 does for ImageNet latents.

The network works entirely at latent resolution: a pixel unshuffle (space-to-depth) in, a pixel shuffle out, and
convolutions with residual blocks in between. Full-resolution convolutions cost several times more CPU time for
blurrier reconstructions at equal time (docs/demo/CALIBRATION.md).

Training has two phases, as the SD-VAE's had: the whole VAE with L1 + L2 reconstruction and a small KL term, then
the decoder alone (encoder frozen, so the latent space the SiT learns does not move) with an adversarial term from a
small patch discriminator (hinge loss; the patch GAN of Esser et al., "Taming Transformers", CVPR 2021, which the
SD-VAE of Rombach et al., CVPR 2022, uses with LPIPS; Stability AI's ft-MSE and ft-EMA decoders are decoder-only
fine-tunes). A decoder trained on reconstruction losses alone renders blurred textures and turns the generator's
small latent errors into speckle; the adversarial fine-tune renders them as plausible texture instead
(docs/demo/CALIBRATION.md, round 4).
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from repa.autoencoder import LATENT_SCALE
from repa.utils import from_uint8
from repa.config import ConfigError


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture and training of the small VAE."""
    in_channels: int = 1                      # image channels (Fashion-MNIST: 1)
    latent_channels: int = 1                  # latent channels (14x14x1: as many numbers as 7x7x4)
    factor: int = 2                           # downsampling: 28x28 images -> (28 / factor)^2 latents (2 or 4)
    width: int = 64                           # channels of the convolutions at latent resolution
    steps: int = 600                          # training steps
    batch_size: int = 64                      # training batch size (128 reconstructs no better, at twice the time)
    lr: float = 2e-3                          # AdamW peak learning rate (warm-up, cosine decay)
    kl_weight: float = 1e-4                   # per-pixel KL weight: a near-deterministic, smooth latent space
    decoder_steps: int = 1000                 # then the decoder alone (encoder frozen) with the adversarial term
    adv_weight: float = 0.1                   # weight of the patch discriminator's term in that phase (0: none)
    seed: int = 0                             # initialisation and batch order

    @property
    def latent_size(self) -> int:
        return 28 // self.factor

    @property
    def tag(self) -> str:
        """Names the cache folder: every field that changes the trained weights."""
        decoder = f"-dec{self.decoder_steps}adv{self.adv_weight:g}" if self.decoder_steps else ""
        return (f"{self.latent_size}x{self.latent_size}x{self.latent_channels}-w{self.width}-{self.steps}s"
                f"b{self.batch_size}-lr{self.lr:g}-kl{self.kl_weight:g}{decoder}-seed{self.seed}")


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1)


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.conv2 = _conv(channels, channels), _conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class TinyVAE(nn.Module):
    """Space-to-depth, convolutions and residual blocks at latent resolution, to (mean, log-variance); the decoder
    mirrors it and ends in a depth-to-space (pixel shuffle)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        if cfg.factor not in (2, 4):
            raise ConfigError(f"autoencoder.factor: 2 or 4 (28x28 -> 14x14 or 7x7 latents), got {cfg.factor}")
        f2, w, z = cfg.in_channels * cfg.factor ** 2, cfg.width, cfg.latent_channels
        self.config = cfg
        self.encoder = nn.Sequential(
            nn.PixelUnshuffle(cfg.factor), _conv(f2, w), nn.SiLU(), _conv(w, w), _Residual(w), nn.SiLU(),
            nn.Conv2d(w, 2 * z, 1))
        self.decoder = nn.Sequential(
            _conv(z, w), _Residual(w), _Residual(w), nn.SiLU(), _conv(w, f2), nn.PixelShuffle(cfg.factor))
        # raw latent = multiplier * network latent; set after training so that raw * LATENT_SCALE has unit variance
        self.register_buffer("multiplier", torch.ones(()))

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network-space posterior mean and log-variance of images in [-1, 1] (B, C, 28, 28) -> (B, z, s, s)."""
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


class PatchDiscriminator(nn.Module):
    """Two stride-2 convolutions and a 3x3 head: one real/fake logit per patch (28x28 images -> 7x7 logits)."""

    def __init__(self, in_channels: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(2 * width, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over 50 steps, then cosine decay to 0 at ``steps``."""
    return peak * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))


def _random_batch(images: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """``size`` uint8 images drawn with replacement, as floats in [-1, 1]."""
    return from_uint8(images[torch.randint(0, len(images), (size,), generator=gen)])


def _posterior_sample(mean: torch.Tensor, logvar: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return mean + torch.randn(mean.shape, generator=gen) * torch.exp(0.5 * logvar)


def _reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (rec - x).abs().mean() + (rec - x).pow(2).mean()


def train_vae(images_uint8: np.ndarray, cfg: AutoencoderConfig, *, log=print) -> TinyVAE:
    """Train the VAE on uint8 images (N, C, 28, 28): L1 + L2 reconstruction + ``kl_weight`` KL, AdamW with a short
    warm-up and cosine decay; set the latent multiplier from the training set's posterior means; then
    ``cfg.decoder_steps`` steps of the decoder alone with the adversarial term (``finetune_decoder``)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    vae = TinyVAE(cfg)
    images = torch.from_numpy(np.ascontiguousarray(images_uint8))
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.steps, cfg.lr)
        x = _random_batch(images, cfg.batch_size, gen)
        mean, logvar = vae.moments(x)
        z = _posterior_sample(mean, logvar, gen)
        rec = vae.decoder(z)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean() / x[0].numel()
        loss = _reconstruction_loss(rec, x) + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step % 200 == 0 or step == cfg.steps - 1):
            log(f"  autoencoder step {step + 1}/{cfg.steps}: reconstruction MSE {(rec - x).pow(2).mean().item():.4f}")
    with torch.no_grad():
        sample = images[torch.randperm(len(images), generator=gen)[:4096]].float() / 127.5 - 1.0
        std = vae.moments(sample)[0].std().item()
    vae.multiplier.fill_(1.0 / (LATENT_SCALE * std))
    if cfg.decoder_steps:
        finetune_decoder(vae, images, cfg, gen, log=log)
    return vae.eval().requires_grad_(False)


def finetune_decoder(vae: TinyVAE, images: torch.Tensor, cfg: AutoencoderConfig, gen: torch.Generator, *,
                     log=print) -> None:
    """``cfg.decoder_steps`` steps of the decoder alone, encoder frozen: L1 + L2 reconstruction of posterior samples
    minus ``adv_weight`` times a patch discriminator's mean logit, the discriminator trained alongside with the
    hinge loss. The discriminator is discarded afterwards; the latent space does not change."""
    vae.encoder.requires_grad_(False)
    disc = PatchDiscriminator(cfg.in_channels)
    opt = torch.optim.AdamW(vae.decoder.parameters(), lr=cfg.lr / 2, weight_decay=0.0)
    disc_opt = torch.optim.AdamW(disc.parameters(), lr=2e-4, betas=(0.5, 0.9), weight_decay=0.0)
    for step in range(cfg.decoder_steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.decoder_steps, cfg.lr / 2)
        x = _random_batch(images, cfg.batch_size, gen)
        with torch.no_grad():
            mean, logvar = vae.moments(x)
            z = _posterior_sample(mean, logvar, gen)
        rec = vae.decoder(z)
        loss = _reconstruction_loss(rec, x)
        if cfg.adv_weight:
            disc.requires_grad_(False)           # the decoder's step needs gradients through it, not of it
            loss = loss - cfg.adv_weight * disc(rec).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cfg.adv_weight:
            disc.requires_grad_(True)
            disc_loss = F.relu(1.0 - disc(x)).mean() + F.relu(1.0 + disc(rec.detach())).mean()
            disc_opt.zero_grad(set_to_none=True)
            disc_loss.backward()
            disc_opt.step()
        if log and (step % 200 == 0 or step == cfg.decoder_steps - 1):
            log(f"  decoder step {step + 1}/{cfg.decoder_steps}: reconstruction MSE "
                f"{(rec - x).pow(2).mean().item():.4f}")


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
    vae = TinyVAE(AutoencoderConfig(**raw))
    vae.load_state_dict(load_file(str(folder / "model.safetensors")))
    return vae.eval().requires_grad_(False)


def reconstruction_error(vae: TinyVAE, images_uint8: np.ndarray) -> float:
    """Mean squared error in [-1, 1] units of decoding the posterior means of ``images_uint8``."""
    mean, _ = vae.encode_moments(images_uint8)
    rec = vae.decode(mean * LATENT_SCALE).float() / 127.5 - 1.0
    return F.mse_loss(rec, torch.as_tensor(images_uint8).float() / 127.5 - 1.0).item()


# ---- REPA-E's arm: the job's VAE tuned end to end ----------------------------------------------------------------

class EndToEndView(nn.Module):
    """The job's VAE in the interface REPA-E's objective trains (``repa.e2e``: diffusers' ``encode(x).latent_dist``
    and ``decode(z).sample``), in raw latent units (the network's latents times ``multiplier``), so that the
    objective's BatchNorm starts at the job's fixed scale."""

    def __init__(self, vae: TinyVAE):
        super().__init__()
        self.vae = vae
        self.config = {"_class_name": "TinyVAE", **asdict(vae.config), "scaling_factor": LATENT_SCALE}

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        mean, logvar = self.vae.moments(x)
        logvar = logvar + 2 * torch.log(self.vae.multiplier)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean * self.vae.multiplier, logvar=logvar,
                                                           std=torch.exp(0.5 * logvar)))

    def decode(self, z: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=self.vae.decoder(z / self.vae.multiplier))


def is_vae_folder(source: str) -> bool:
    """Whether ``source`` is a folder written by ``save_vae``."""
    config = Path(source) / "config.json"
    if not (config.is_file() and (Path(source) / "model.safetensors").is_file()):
        return False
    try:
        return set(json.loads(config.read_text())) == set(asdict(AutoencoderConfig()))
    except (OSError, ValueError):
        return False


def register_end_to_end_format() -> None:
    """Let ``objective.kind=repa-e`` start from a folder written by ``save_vae`` (``e2e.vae=FOLDER``)."""
    from repa.e2e import VAE_FORMATS
    VAE_FORMATS.setdefault("repa-demo", (is_vae_folder, lambda source, device: EndToEndView(
        load_vae_folder(source)).to(device)))


class TunedDecoder:
    """Decodes the samples of a REPA-E arm: its checkpoint's tuned VAE, its latent BatchNorm's EMA statistics
    undone first (the SiT learned the normalised latents)."""

    def __init__(self, vae: TinyVAE, objective_state: dict):
        from repa.e2e import BN_EPS
        self.view = EndToEndView(copy.deepcopy(vae))
        self.view.load_state_dict(objective_state["vae"])
        self.view.eval()
        stats = objective_state["latent_norm_ema"]
        self.mean, self.std = stats["mean"].view(1, -1, 1, 1), (stats["var"] + BN_EPS).sqrt().view(1, -1, 1, 1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, z, s, s) -> uint8 images (B, C, 28, 28)."""
        x = self.view.decode(latents.float() * self.std + self.mean).sample
        return torch.clamp(127.5 * (x + 1.0), 0, 255).to(torch.uint8)
