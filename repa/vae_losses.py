"""The VAE's own regulariser in REPA-E: L1 + LPIPS + KL + a patch discriminator (hinge loss).

REPA-E keeps the VAE's training losses while it tunes the VAE end to end (End2End-Diffusion/REPA-E,
``loss/losses.py`` ``ReconstructionLoss_Single_Stage`` with ``configs/l1_lpips_kl_gan.yaml``): the L1 distance, the
LPIPS distance (Zhang et al., CVPR 2018) through VGG16, the KL of the posterior to N(0, I) summed over latent
elements and averaged over images, and the generator term -mean D(x_hat) of the PatchGAN of pix2pix (Isola et al.,
CVPR 2017) as the taming-transformers VQGAN uses it (Esser et al., CVPR 2021), whose discriminator learns by the
hinge loss. Images are in [-1, 1].
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from repa.e2e_config import EndToEndConfig
from repa.fields import ConfigError


# ---- the patch discriminator -----------------------------------------------------------------------------------

class PatchDiscriminator(nn.Module):
    """PatchGAN: 4x4 convolutions, ``layers`` of them with stride 2 after the first, BatchNorm and LeakyReLU(0.2),
    one logit per overlapping patch (B, 1, h, w). Weights N(0, 0.02), BatchNorm scales N(1, 0.02) (pix2pix's
    init)."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        widths = [channels * min(2 ** i, 8) for i in range(layers + 1)]
        seq: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        for i in range(1, layers + 1):                     # the last of these keeps the resolution (stride 1)
            seq += [nn.Conv2d(widths[i - 1], widths[i], 4, 2 if i < layers else 1, 1, bias=False),
                    nn.BatchNorm2d(widths[i]), nn.LeakyReLU(0.2)]
        seq.append(nn.Conv2d(widths[layers], 1, 4, 1, 1))
        self.main = nn.Sequential(*seq)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)


# ---- LPIPS -----------------------------------------------------------------------------------------------------

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)                      # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's layout
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)         # LPIPS's input scaling layer (richzhang/PerceptualSimilarity)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """LPIPS-VGG: unit-normalised VGG16 activations at five depths, squared differences weighted per channel by
    the learned 1x1 linear layers, averaged over space and summed over depths -> (B,). ``features`` has the
    layout of torchvision's ``vgg16().features`` so its ImageNet state dict (``features.*``) loads as is."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, 1, 1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in (64, 128, 256, 512, 512))
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS distance (B,) of images in LPIPS's [-1, 1] range."""
        fa, fb = self._taps((a - self.shift) / self.scale), self._taps((b - self.shift) / self.scale)
        return sum(lin((x - y) ** 2).mean((2, 3)) for lin, x, y in zip(self.lins, fa, fb))[:, 0]

    def load_weights(self, vgg_path: str, lin_path: str) -> "LPIPS":
        """torchvision's VGG16 file (``features.*``, the classifier is ignored) and LPIPS's linear layers (the
        lpips package's ``linK.model.1.weight`` or taming's ``vgg.pth``); every needed tensor must be present."""
        from repa.integrity import load_state_dict_file
        vgg = {k: v for k, v in load_state_dict_file(vgg_path, "VGG16").items() if k.startswith("features.")}
        lin = {}
        for k, v in load_state_dict_file(lin_path, "LPIPS").items():
            if k.startswith("lin") and k.endswith("weight"):
                lin[f"lins.{k[3]}.weight"] = v
        missing = self.load_state_dict({**vgg, **lin, "shift": self.shift, "scale": self.scale}, strict=False)
        absent = missing.missing_keys
        if absent:
            raise ConfigError(f"e2e.perceptual_weights: {vgg_path} and {lin_path} lack {absent[:4]}: give "
                              "torchvision's vgg16 ImageNet weights and LPIPS's vgg.pth")
        return self


# name -> builder of a frozen perceptual distance ``(a, b) -> (B,)`` from the config (``e2e.perceptual``)
PERCEPTUAL = {"lpips-vgg": lambda e: LPIPS().load_weights(*e.perceptual_weights)}


def load_perceptual(e: EndToEndConfig, device) -> nn.Module | None:
    """The frozen perceptual network of ``e.perceptual`` (None for "none" or weight 0), in eval mode."""
    if e.perceptual == "none" or e.perceptual_weight == 0:
        return None
    return PERCEPTUAL[e.perceptual](e).to(device).eval().requires_grad_(False)


# ---- the losses ------------------------------------------------------------------------------------------------

def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over the latent elements (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def disc_factor(e: EndToEndConfig, step: int) -> float:
    """The adversarial terms' factor at ``step``: 0 before ``disc_start`` (the discriminator's schedule)."""
    return e.disc_factor if step >= e.disc_start else 0.0


def generator_loss(images: torch.Tensor, recon: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
                   disc: nn.Module, perceptual: nn.Module | None, e: EndToEndConfig, step: int
                   ) -> tuple[torch.Tensor, dict]:
    """The VAE's regulariser (scalar) and its detached terms: L1 + w_p LPIPS + w_kl KL + w_d f(step) (-D(x_hat)).

    ``images``, ``recon``: (B, 3, H, W) in [-1, 1]; ``mean``, ``logvar``: the posterior (B, C, h, w).
    """
    images, recon = images.float(), recon.float()
    l1 = e.reconstruction_weight * F.l1_loss(recon, images)
    lpips = torch.zeros((), device=images.device)
    if perceptual is not None:     # REPA-E's LPIPS maps its [0, 1] input by 2x - 1 but is given [-1, 1] images
        lpips = perceptual(images * 2 - 1, recon * 2 - 1).mean()
    kl = kl_to_standard_normal(mean.float(), logvar.float()).mean()
    factor = disc_factor(e, step)
    gan = -disc(recon).mean() if factor > 0 and e.disc_weight > 0 else torch.zeros((), device=images.device)
    total = l1 + e.perceptual_weight * lpips + e.kl_weight * kl + e.disc_weight * factor * gan
    return total, {"vae_l1": l1.detach(), "vae_lpips": lpips.detach(), "vae_kl": kl.detach(),
                   "vae_gan": gan.detach()}


def discriminator_loss(images: torch.Tensor, recon: torch.Tensor, disc: nn.Module, e: EndToEndConfig,
                       step: int) -> tuple[torch.Tensor, dict]:
    """The hinge loss of the discriminator on real images and detached reconstructions, times f(step)."""
    real, fake = disc(images.float().detach()), disc(recon.float().detach())
    hinge = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
    return disc_factor(e, step) * hinge, {"disc_loss": hinge.detach(), "logits_real": real.detach().mean(),
                                          "logits_fake": fake.detach().mean()}
