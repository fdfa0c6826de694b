"""DDPM ancestral sampling on a respaced process with classifier-free guidance: DiT's sampler.

Registered as ``"ddpm"`` in ``repa.samplers.SAMPLERS``, so ``repa.sample(model, noise, labels, sampler="ddpm",
steps=250, cfg_scale=..., guidance_interval=...)`` uses it. Guidance mixes epsilon channels only,
eps_u + w (eps_c - eps_u): by default the first 3, as DiT's ``forward_with_cfg`` does; the other epsilon channels
and the learned variance come from the conditional half (as ``forward_with_cfg`` and its choice of the conditional
samples leave them). The guidance interval is read on the network time
t = timestep / 1000 of the base process. The state is integrated in float64; the network runs in its own dtype.
"""
from __future__ import annotations

import torch

from repa.diffusion.gaussian import GaussianDiffusion, space_timesteps
from repa.diffusion.objective import base_diffusion
from repa.guidance import GuidedModel, guided_channels_of, per_sample_noise

DEFAULT_STEPS = 250


@torch.no_grad()
def ddpm(model, noise: torch.Tensor, labels: torch.Tensor, *, steps: int = DEFAULT_STEPS, cfg_scale: float = 1.0,
         guidance_interval: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | list[torch.Generator] | None = None,
         null_class: int | None = None, dtype: torch.dtype | None = None,
         guided_channels: int | str | None = None,
         clip_denoised: bool = False, diffusion: GaussianDiffusion | None = None) -> torch.Tensor:
    """Ancestral sampling x_T -> x_0 through ``steps`` respaced timesteps (``space_timesteps(1000, steps)``).

    Args:
        model: an epsilon network ``model(x, t, y)`` with t = timestep / 1000 (a DiT), C or 2C output channels.
        noise: (B, C, H, W) standard normal x_T.
        labels: (B,) class labels.
        steps: number of respaced timesteps (NFE; twice that where guided). DiT uses 250.
        cfg_scale: guidance scale w on epsilon (1 = none).
        guidance_interval: (low, high): guidance only where low <= timestep / 1000 <= high.
        generator: randomness of the ancestral steps.
        null_class: the unconditional label (default ``model.config.null_class``; only needed when guiding).
        dtype: the network's input dtype (default: its parameters' dtype, else float32).
        guided_channels: ``"all"`` (C) or k: guide only the first k epsilon channels. Default: the family's
            reference (``repa.guidance.default_guided_channels``: 3 for a DiT, as its ``forward_with_cfg``).
        clip_denoised: clamp the implied x_0 to [-1, 1] at each step (DiT samples latents unclipped).
        diffusion: the base process (default: DiT's 1000 linear steps).
    Returns:
        x_0 (B, C, H, W) in ``noise``'s dtype. The last step (timestep 0) adds no noise.
    """
    config = getattr(model, "config", None)
    if getattr(config, "prediction", "epsilon") != "epsilon":
        raise ValueError(f"the ddpm sampler needs an epsilon-predicting network (a DiT trained with objective.kind="
                         f"iddpm, or a released DiT); this {config.name} predicts {config.prediction}: use euler, "
                         "heun or sde")
    channels = noise.shape[1]
    guided = GuidedModel(model, labels, cfg_scale=cfg_scale, interval=tuple(guidance_interval), null_class=null_class,
                         dtype=dtype, time_dtype=torch.float64,
                         guided_channels=guided_channels_of(model, guided_channels, channels))
    base = diffusion or base_diffusion()
    process = base.respace(space_timesteps(base.num_timesteps, int(steps)))
    x = noise.double()
    for i in reversed(range(process.num_timesteps)):
        timesteps = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        t = float(process.model_time(timesteps[:1]))
        out = guided(x, t)            # (B, C or 2C): epsilon guided, a learned variance conditional
        step = process.p_mean_variance(out, x, timesteps, clip_denoised=clip_denoised)
        x = step.mean
        if i > 0:
            eps = per_sample_noise(x.shape, generator, x.device)
            x = x + torch.exp(0.5 * step.log_variance) * eps
    return x.to(noise.dtype)
