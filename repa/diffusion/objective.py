"""REPA with the improved-DDPM objective (Yu et al. 2025, Sec. 4 on DiT): hybrid loss + lambda * alignment.

The alignment term is ``repa.losses.with_alignment`` unchanged; only the denoising term differs from the
interpolant objective. Registered as ``"iddpm"`` in ``repa.objectives.OBJECTIVES``.
"""
from __future__ import annotations

import functools

import torch

from repa.config import ObjectiveConfig
from repa.diffusion.gaussian import NUM_TIMESTEPS, GaussianDiffusion
from repa.losses import LossOutput, spatial_normalize, with_alignment

VLB_WEIGHT = 1.0   # weight of the per-timestep bound term L_t (DiT's value; IDDPM's lambda = 0.001 on T * L_t)


@functools.lru_cache(maxsize=4)
def base_diffusion(num_timesteps: int = NUM_TIMESTEPS) -> GaussianDiffusion:
    """The DiT training process (linear betas, ``num_timesteps`` steps), built once."""
    return GaussianDiffusion.linear(num_timesteps)


def timesteps_from_time(t: torch.Tensor, num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """Map uniform t in [0, 1) to integer timesteps floor(t T) in 0..T-1 (uniform timestep sampling), int64 (B,)."""
    return torch.floor(t.to(torch.float64) * num_timesteps).long().clamp_(0, num_timesteps - 1)


def iddpm_repa_loss(features, x0: torch.Tensor, labels: torch.Tensor, encoder_tokens: list[torch.Tensor] | None,
                    cfg: ObjectiveConfig, *, noise: torch.Tensor, t: torch.Tensor | None = None,
                    timesteps: torch.Tensor | None = None, proj_coeff: float | None = None,
                    vlb_weight: float = VLB_WEIGHT, diffusion: GaussianDiffusion | None = None) -> LossOutput:
    """One evaluation of REPA on the improved-DDPM objective for clean inputs x0 (B, C, H, W).

    Args:
        features: ``(x_t, t, y, *, project) -> ModelOutput`` (a DiT's ``forward_features``) with
            t = timestep / 1000, predicting epsilon (C channels) or epsilon and the variance interpolation v (2C).
        encoder_tokens: frozen-encoder tokens of the clean images, one (B, N, E) per encoder; unused when lambda = 0.
        cfg: the objective section (lambda).
        noise: (B, C, H, W) standard normal.
        t: (B,) uniform draws in [0, 1) from the trainer's per-step generator, mapped to timesteps floor(1000 t);
            or give ``timesteps`` (B,) int64 directly. Exactly one of the two.
        proj_coeff: the lambda of this step (defaults to ``cfg.proj_coeff``).
        vlb_weight: weight of the variational-bound term (1.0 as in DiT).
        diffusion: the process (default: ``base_diffusion()``, 1000 linear steps).
    Returns:
        ``LossOutput`` whose ``denoise_loss`` term is the mean of L_simple + vlb_weight L_vlb, ``align_loss`` the REPA term.
    """
    if (t is None) == (timesteps is None):
        raise ValueError("give exactly one of t (uniform in [0, 1)) and timesteps (integers)")
    lam = cfg.proj_coeff if proj_coeff is None else proj_coeff
    diffusion = diffusion or base_diffusion()
    if timesteps is None:
        timesteps = timesteps_from_time(t, diffusion.num_timesteps)
    timesteps = timesteps.to(x0.device)
    x_t = diffusion.q_sample(x0, timesteps, noise)
    out = features(x_t, diffusion.model_time(timesteps), labels, project=lam > 0)
    prediction = out.prediction                             # (B, C or 2C, H, W): epsilon (and v)
    with torch.autocast(device_type=x0.device.type, enabled=False):   # the bound needs float32 logs and exps
        terms = diffusion.training_losses(prediction.float(), x0.float(), x_t.float(), timesteps, noise.float(),
                                          vlb_weight=vlb_weight)
    if lam > 0 and cfg.target_norm == "spatial":             # iREPA's target normalisation (repa.losses)
        encoder_tokens = [spatial_normalize(y, cfg.target_norm_gamma) for y in encoder_tokens or []]
    return with_alignment(terms["loss"].mean(), out, encoder_tokens, lam)
