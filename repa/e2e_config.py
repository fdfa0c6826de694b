"""REPA-E's section of a training config (``TrainConfig.e2e``), read only by ``objective.kind=repa-e``.

REPA-E (Leng et al., ICCV 2025; End2End-Diffusion/REPA-E) trains the VAE with the diffusion transformer. Every
default below is the value of its ``train_repae.py`` arguments and ``configs/l1_lpips_kl_gan.yaml``; the
differences that remain are listed in docs/REPA-E.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from repa.fields import _require


@dataclass(frozen=True)
class EndToEndConfig:
    """The VAE tuned end to end, its regulariser (L1 + LPIPS + KL + patch GAN) and their optimisers."""
    vae: str = "stabilityai/sd-vae-ft-mse"  # the starting VAE: hub id, diffusers folder, or REPA-E's .pt file
    vae_lr: float = 1e-4              # AdamW learning rate of the VAE (train_repae.py --vae-learning-rate)
    disc_lr: float = 1e-4             # ...of the discriminator (--disc-learning-rate)
    vae_align_proj_coeff: float = 1.5  # weight of the alignment loss in the VAE's loss (--vae-align-proj-coeff)
    bn_momentum: float = 0.1          # momentum of the latent BatchNorm's running statistics (--bn-momentum)
    reconstruction_weight: float = 1.0  # L1 reconstruction weight (l1_lpips_kl_gan.yaml)
    perceptual: Literal["lpips-vgg", "none"] = "lpips-vgg"  # the perceptual network ("none": no such term)
    perceptual_weight: float = 1.0    # LPIPS weight
    perceptual_weights: tuple[str, ...] = ()  # lpips-vgg: (torchvision VGG16 weights, LPIPS linear-layer weights)
    kl_weight: float = 1e-6           # KL weight (the KL summed over latent elements, averaged over images)
    disc_weight: float = 0.1          # weight of the generator's adversarial term
    disc_factor: float = 1.0          # multiplies both adversarial losses once disc_start is reached
    disc_start: int = 0               # step from which the discriminator trains and the adversarial term counts
    disc_layers: int = 3              # PatchGAN depth (n_layers)
    disc_channels: int = 64           # PatchGAN width of its first convolution (ndf)
    disc_weights: str = ""            # a trained discriminator's state dict (--disc-pretrained-ckpt); "": fresh


def validate_e2e(e: EndToEndConfig) -> None:
    """The ranges of the section (types are checked with the rest of the config); ConfigError naming the field."""
    for name in ("vae_lr", "disc_lr"):
        _require(getattr(e, name) > 0, f"e2e.{name}", f"must be > 0, got {getattr(e, name)}")
    _require(0 < e.bn_momentum <= 1, "e2e.bn_momentum", f"must be in (0, 1], got {e.bn_momentum}")
    _require(e.disc_layers >= 1 and e.disc_channels >= 1, "e2e.disc_layers",
             f"disc_layers and disc_channels must be >= 1, got {e.disc_layers} and {e.disc_channels}")
    _require(bool(e.vae.strip()), "e2e.vae", "must name the starting VAE (hub id, folder or REPA-E .pt file)")
    if e.perceptual == "lpips-vgg" and e.perceptual_weight > 0:
        _require(len(e.perceptual_weights) == 2, "e2e.perceptual_weights",
                 "LPIPS-VGG needs two files: torchvision's VGG16 ImageNet weights (vgg16-397923af.pth) and LPIPS's "
                 "linear layers (the lpips package's weights/v0.1/vgg.pth); pass --e2e.perceptual-weights VGG LIN, "
                 "or --e2e.perceptual none (docs/REPA-E.md: what to use offline)")
