"""REPA-E's released autoencoders (``f8d4``, ``f16d32``) as diffusers ``AutoencoderKL`` models.

End2End-Diffusion/REPA-E's ``models/autoencoder.py`` is latent-diffusion's KL autoencoder (CompVis/latent-diffusion,
``ldm/models/autoencoder.py``): ``f8d4`` (channel multipliers 1, 2, 4, 4; 4 latent channels; SD-VAE, E2E-SDVAE)
and ``f16d32`` (1, 1, 2, 2, 4; 32 channels; attention also in the 16x16 stages; IN-VAE, VA-VAE and their E2E
versions). It is the architecture of diffusers' ``AutoencoderKL`` under other parameter names, so their state
dicts are renamed here (every key must be used, the load is strict) and everything that reads a diffusers VAE
(``repa prepare --vae``, sampling, REPA-E training) reads theirs.

Their latent statistics (``NAME-latents-stats.pt``: per-channel ``latents_bias`` and ``latents_scale``, the
transformer's input is (z - bias) * scale) are folded into the converted model (``fold_latent_norm``) so
that its latents at repa's fixed ``LATENT_SCALE`` are the normalised ones their transformers were trained on.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from repa.fields import ConfigError

ARCHS = {"f8d4": (4, (1, 2, 4, 4)), "f16d32": (32, (1, 1, 2, 2, 4))}   # latent channels, channel multipliers
_ATTN_RESOLUTION, _RESOLUTION, _WIDTH = 16, 256, 128                   # ldm's attn_resolutions=(16,), ch=128


def diffusers_config(arch: str) -> dict:
    """The ``AutoencoderKL`` config of REPA-E's architecture ``arch``."""
    channels, mult = ARCHS[arch]
    levels = len(mult)
    attn = [_RESOLUTION // 2 ** i == _ATTN_RESOLUTION for i in range(levels)]        # per level, finest first
    return dict(in_channels=3, out_channels=3, latent_channels=channels, layers_per_block=2, norm_num_groups=32,
                block_out_channels=[_WIDTH * m for m in mult], sample_size=_RESOLUTION, act_fn="silu",
                down_block_types=["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn],
                up_block_types=["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)],
                scaling_factor=0.18215)


_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _rename(key: str, levels: int) -> str:
    """ldm's parameter name -> diffusers'."""
    m = re.fullmatch(r"(encoder|decoder)\.(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(\w+)\.(weight|bias)", key)
    if m:
        part, way, level, kind, j, layer, leaf = m.groups()
        level = int(level) if way == "down" else levels - 1 - int(level)     # diffusers' up blocks: coarsest first
        table = _RESNET if kind == "block" else _ATTN
        return f"{part}.{way}_blocks.{level}.{'resnets' if kind == 'block' else 'attentions'}.{j}." \
               f"{table[layer]}.{leaf}"
    m = re.fullmatch(r"(encoder|decoder)\.(down|up)\.(\d+)\.(downsample|upsample)\.conv\.(weight|bias)", key)
    if m:
        part, way, level, _, leaf = m.groups()
        level = int(level) if way == "down" else levels - 1 - int(level)
        return f"{part}.{way}_blocks.{level}.{way}samplers.0.conv.{leaf}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.(block_1|block_2|attn_1)\.(\w+)\.(weight|bias)", key)
    if m:
        part, which, layer, leaf = m.groups()
        if which == "attn_1":
            return f"{part}.mid_block.attentions.0.{_ATTN[layer]}.{leaf}"
        return f"{part}.mid_block.resnets.{int(which[-1]) - 1}.{_RESNET[layer]}.{leaf}"
    return re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", key)


def infer_arch(state: dict) -> str:
    """``f8d4`` or ``f16d32`` from the shape of ``quant_conv``."""
    weight = state.get("quant_conv.weight")
    found = [a for a, (c, _) in ARCHS.items() if weight is not None and weight.shape[0] == 2 * c]
    if not found:
        raise ConfigError(f"not a REPA-E autoencoder state dict (quant_conv.weight "
                          f"{tuple(weight.shape) if weight is not None else 'missing'}); known: {', '.join(ARCHS)}")
    return found[0]


def from_repae_state(state: dict, arch: str | None = None):
    """A diffusers ``AutoencoderKL`` holding REPA-E's autoencoder ``state`` (strict: every key used, every
    parameter given)."""
    from diffusers import AutoencoderKL
    arch = arch or infer_arch(state)
    levels = len(ARCHS[arch][1])
    vae = AutoencoderKL(**diffusers_config(arch))
    target = vae.state_dict()
    renamed = {}
    for key, value in state.items():
        new = _rename(key, levels)
        if new not in target:
            raise ConfigError(f"REPA-E {arch} autoencoder: unexpected parameter {key!r}")
        renamed[new] = value.reshape(target[new].shape)     # attention: ldm's 1x1 convolutions, diffusers' linears
    vae.load_state_dict(renamed, strict=True)
    return vae


def fold_latent_norm(vae, mean: torch.Tensor, var: torch.Tensor, *, eps: float, scale: float) -> None:
    """Make ``vae``'s latents z' = (z - mean) / (sqrt(var + eps) * scale), in place: ``quant_conv`` gives the
    moments of z' and ``post_quant_conv`` takes z' (both affine in z, so the fold is exact up to rounding)."""
    if vae.quant_conv is None or vae.post_quant_conv is None:
        raise ConfigError("the VAE has no quant_conv / post_quant_conv to fold the latent normalisation into")
    c = mean.numel()
    k = (var.double() + eps).sqrt() * scale                         # (C,) z = k z' + mean
    with torch.no_grad():
        q, p = vae.quant_conv, vae.post_quant_conv
        w, b = q.weight.double(), q.bias.double()
        w[:c] /= k.view(c, 1, 1, 1)
        b[:c] = (b[:c] - mean.double()) / k
        b[c:2 * c] -= 2 * torch.log(k)                                  # log-variance of z' = of z - 2 log k
        q.weight.copy_(w)
        q.bias.copy_(b)
        w2 = p.weight.double()                                          # (C_out, C, 1, 1)
        p.bias.copy_(p.bias.double() + (w2[:, :, 0, 0] @ mean.double()))
        p.weight.copy_(w2 * k.view(1, c, 1, 1))


def _files(source: Path) -> tuple[Path, Path | None]:
    """The VAE weights and its latent statistics (when present) of a REPA-E file or folder."""
    if source.is_dir():
        weights = [p for p in sorted(source.glob("*.pt")) if not p.name.endswith(("-latents-stats.pt",
                                                                                   "-discriminator-ckpt.pt"))]
        if len(weights) != 1:
            raise ConfigError(f"{source}: expected one REPA-E autoencoder .pt file, found {[p.name for p in weights]}")
        source = weights[0]
    stats = source.with_name(source.stem + "-latents-stats.pt")
    return source, stats if stats.is_file() else None


def load_repae_vae(source: str | os.PathLike, *, scale: float, fold_stats: bool = True):
    """REPA-E's released autoencoder (``NAME.pt``, or a folder holding it) as a diffusers ``AutoencoderKL`` in
    eval mode, gradients off; with its ``NAME-latents-stats.pt`` beside it and ``fold_stats``, the latent
    normalisation is folded in (module docstring)."""
    from repa.integrity import load_state_dict_file
    weights, stats = _files(Path(os.path.expanduser(os.fspath(source))))
    state = load_state_dict_file(weights, "REPA-E autoencoder")
    vae = from_repae_state(state)
    if stats is not None and fold_stats:
        s = load_state_dict_file(stats, "REPA-E latent statistics")
        latents_scale, bias = s["latents_scale"].flatten().double(), s["latents_bias"].flatten().double()
        fold_latent_norm(vae, bias, 1.0 / latents_scale.pow(2), eps=0.0, scale=scale)
    return vae.eval().requires_grad_(False)


def is_repae_source(source: str) -> bool:
    """A ``.pt`` file, or a folder without ``config.json`` holding ``.pt`` files: REPA-E's release format."""
    path = Path(os.path.expanduser(source))
    if path.is_file():
        return path.suffix in (".pt", ".pth")
    return path.is_dir() and not (path / "config.json").is_file() and not (path / "vae").is_dir() \
        and any(path.glob("*.pt"))
