"""The REPA objective (Yu et al. 2025, Eq. 8): denoising loss + lambda * token-wise alignment loss.

Time sampling, the velocity-matching loss and the alignment loss live here and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from repa.config import ObjectiveConfig
from repa.paths import get_path


def sample_time(batch_size: int, cfg: ObjectiveConfig, *, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Draw t (B,) in [0, 1]: uniform, or lognormal (sigma = exp(N(0, 1)) mapped through the path)."""
    if cfg.time_sampling == "uniform":
        return torch.rand(batch_size, generator=generator, device=device)
    if cfg.time_sampling == "lognormal":
        ratio = torch.exp(torch.randn(batch_size, generator=generator, device=device))
        return get_path(cfg.path).time_from_sigma_ratio(ratio)
    raise ValueError(f"objective.time_sampling: unknown {cfg.time_sampling!r}; use 'uniform' or 'lognormal'")


def drop_labels(labels: torch.Tensor, uniforms: torch.Tensor, prob: float, null_class: int) -> torch.Tensor:
    """Replace label i by the null class where uniforms[i] < prob (classifier-free guidance training)."""
    if prob <= 0:
        return labels
    return torch.where(uniforms < prob, torch.full_like(labels, null_class), labels)


def denoising_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over (C, H, W): (B,)."""
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def alignment_loss(projected: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """REPA term: minus the cosine similarity of each projected token with the encoder token, averaged.

    Both inputs are lists (one entry per encoder) of (B, N, E). Normalisation and the dot product always run in
    float32, whatever the autocast dtype: low-precision normalisation is what makes long fp16 runs diverge.
    Returns (B,): the per-sample loss averaged over tokens and encoders.
    """
    if len(projected) != len(targets):
        raise ValueError(f"{len(projected)} projector outputs but {len(targets)} encoder token sets")
    per_encoder = []
    for z, y in zip(projected, targets):
        if z.shape[:2] != y.shape[:2] or z.shape[-1] != y.shape[-1]:
            raise ValueError(f"projector output {tuple(z.shape)} does not match encoder tokens {tuple(y.shape)}: "
                             "model tokens (grid of input_size/patch_size) must equal the encoder's token grid and "
                             "model.encoder_dims must equal the encoder widths")
        with torch.autocast(device_type=z.device.type, enabled=False):
            z32 = F.normalize(z.float(), dim=-1)
            y32 = F.normalize(y.float(), dim=-1)
            per_encoder.append(-(z32 * y32).sum(dim=-1).mean(dim=1))      # (B,)
    return torch.stack(per_encoder).mean(dim=0)


@dataclass
class LossOutput:
    """Scalar losses of one batch: ``total`` = ``denoise`` + lambda * ``align``."""
    total: torch.Tensor
    denoise: torch.Tensor
    align: torch.Tensor


def repa_loss(model, x0: torch.Tensor, labels: torch.Tensor, encoder_tokens: list[torch.Tensor] | None,
              cfg: ObjectiveConfig, *, t: torch.Tensor, noise: torch.Tensor,
              proj_coeff: float | None = None) -> LossOutput:
    """One evaluation of the REPA objective on clean inputs x0 (B, C, H, W).

    Args:
        model: a SiT (or the DDP wrapper of one) called as ``model(x_t, t, y, project=...)``.
        encoder_tokens: frozen-encoder tokens of the clean images, one (B, N, E) per encoder; ignored when
            the effective lambda is 0.
        cfg: the objective section (path, lambda).
        t: (B,) diffusion times (``sample_time``); noise: (B, C, H, W) standard normal.
        proj_coeff: the lambda for this step (defaults to ``cfg.proj_coeff``; the trainer passes the scheduled one).
    """
    if cfg.kind == "iddpm":          # DiT's improved-DDPM objective: repa.diffusion
        from repa.diffusion.objective import iddpm_repa_loss
        return iddpm_repa_loss(model, x0, labels, encoder_tokens, cfg, t=t, noise=noise, proj_coeff=proj_coeff)
    lam = cfg.proj_coeff if proj_coeff is None else proj_coeff
    path = get_path(cfg.path)
    x_t = path.interpolate(x0, noise, t)
    target = path.velocity(x0, noise, t)
    out = model(x_t, t, labels, project=lam > 0)
    prediction = (out.velocity if lam > 0 else out)[:, : x0.shape[1]]   # learned-sigma nets: the first C channels
    return with_alignment(denoising_loss(prediction, target).mean(), out, encoder_tokens, lam)


def with_alignment(denoise: torch.Tensor, out, encoder_tokens: list[torch.Tensor] | None, lam: float) -> LossOutput:
    """Eq. 8: total = denoising loss + lambda * alignment loss of the model output's projected tokens."""
    if lam > 0:
        if not encoder_tokens:
            raise ValueError("REPA (lambda > 0) needs encoder tokens for every batch")
        align = alignment_loss(out.projected, encoder_tokens).mean()
    else:
        align = torch.zeros((), device=denoise.device)
    return LossOutput(denoise + lam * align, denoise.detach(), align.detach())
