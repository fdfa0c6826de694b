"""DDPM ancestral sampling on a respaced process with classifier-free guidance: DiT's sampler.

Registered as ``"ddpm"`` in ``repa.samplers.SAMPLERS`` (the auto choice for epsilon networks), so
``repa.sample(model, noise, labels, sampler="ddpm", steps=250, cfg_scale=..., guidance_interval=...)`` uses it. Guidance mixes epsilon channels only,
eps_u + w (eps_c - eps_u): by default the first 3, as DiT's ``forward_with_cfg`` does; the other epsilon channels
and the learned variance come from the conditional half (as ``forward_with_cfg`` and its choice of the conditional
samples leave them). The guidance interval is read on the network time
t = timestep / 1000 of the base process. The state is integrated in float64; the network runs in its own dtype.
"""
from __future__ import annotations

import torch

from repa.diffusion.gaussian import GaussianDiffusion, space_timesteps
from repa.diffusion.objective import base_diffusion
from repa.guidance import per_sample_noise

DEFAULT_STEPS = 250


def ddpm_times(steps: int, diffusion: GaussianDiffusion | None = None) -> list[float]:
    """The network times t = timestep / 1000 of the ``steps`` respaced timesteps (``space_timesteps``), from the
    noisiest to 0: DDPM's time grid."""
    base = diffusion or base_diffusion()
    kept = sorted(space_timesteps(base.num_timesteps, int(steps)), reverse=True)
    return [k / base.num_timesteps for k in kept]


@torch.no_grad()
def ddpm(denoiser, x: torch.Tensor, times: list[float], generator: torch.Generator | list | None = None, *,
         clip_denoised: bool = False, diffusion: GaussianDiffusion | None = None) -> torch.Tensor:
    """Ancestral sampling x_T -> x_0 through the respaced timesteps whose network times are ``times``
    (``ddpm_times``): the sampler contract of ``repa.samplers``.

    Args:
        denoiser: ``repa.guidance.GuidedModel`` around an epsilon network ``model(x, t, y)`` with t = timestep / 1000
            (a DiT), C or 2C output channels: epsilon guided, a learned variance from the conditional half.
        x: (B, C, H, W) float64 x_T.
        times: the kept timesteps / 1000, descending (DiT: 250 of them).
        generator: randomness of the ancestral steps (one generator, or one per sample).
        clip_denoised: clamp the implied x_0 to [-1, 1] at each step (DiT samples latents unclipped).
        diffusion: the base process (default: DiT's 1000 linear steps).
    Returns:
        x_0 (B, C, H, W) float64. The last step (timestep 0) adds no noise.
    """
    base = diffusion or base_diffusion()
    process = base.respace({int(round(t * base.num_timesteps)) for t in times})
    for i in reversed(range(process.num_timesteps)):
        timesteps = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        t = float(process.model_time(timesteps[:1]))
        out = denoiser(x, t)          # (B, C or 2C): epsilon guided, a learned variance conditional
        step = process.p_mean_variance(out, x, timesteps, clip_denoised=clip_denoised)
        x = step.mean
        if i > 0:
            eps = per_sample_noise(x.shape, generator, x.device)
            x = x + torch.exp(0.5 * step.log_variance) * eps
    return x
