"""DDPM ancestral sampling on a respaced process with classifier-free guidance: DiT's sampler.

Registered as ``"ddpm"`` in ``repa.samplers.SAMPLERS``, so ``repa.sample(model, noise, labels, sampler="ddpm",
steps=250, cfg_scale=..., guidance_interval=...)`` uses it. Guidance mixes only the epsilon channels,
eps_u + w (eps_c - eps_u); the learned variance comes from the conditional half (as DiT's ``forward_with_cfg``
and its choice of the conditional samples leave it). The guidance interval is read on the network time
t = timestep / 1000 of the base process. The state is integrated in float64; the network runs in its own dtype.
"""
from __future__ import annotations

import torch

from repa.diffusion.gaussian import GaussianDiffusion, space_timesteps
from repa.diffusion.objective import base_diffusion
from repa.samplers import check_guidance, randn_like_batch

DEFAULT_STEPS = 250


def predicts_epsilon(model) -> bool:
    """Whether ``model`` is an epsilon network (trained with objective.kind "iddpm", or a released DiT).

    The velocity samplers (euler, heun, sde) give meaningless samples for such a network, and ``ddpm`` for a
    velocity network.
    """
    train_config = getattr(model, "train_config", None)
    if train_config is not None:
        return train_config.objective.kind == "iddpm"
    return getattr(getattr(model, "config", None), "family", None) == "DiT"


def _check_epsilon_model(model) -> int:
    """Refuse velocity networks (SiT, interpolant runs); return the model's null class."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("the model has no .config; cannot find its null class for guidance")
    if not predicts_epsilon(model):
        raise ValueError(f"the ddpm sampler needs an epsilon-predicting network (a DiT trained with objective.kind="
                         f"iddpm, or a released DiT); this {config.family} predicts velocity: use euler, heun or sde")
    return config.null_class


def _guided_output(model, x: torch.Tensor, t: float, labels: torch.Tensor, null_labels: torch.Tensor,
                   cfg_scale: float, interval: tuple[float, float], dtype: torch.dtype) -> torch.Tensor:
    """Network output (B, C or 2C) at (x, t), float64; inside the interval epsilon is guided, the variance is
    the conditional one. Outside it, or for w == 1, only the conditional half is evaluated."""
    guided = cfg_scale != 1.0 and interval[0] <= t <= interval[1]
    x_in = torch.cat([x, x]) if guided else x
    y_in = torch.cat([labels, null_labels]) if guided else labels
    t_in = torch.full((x_in.shape[0],), t, dtype=torch.float64, device=x.device)   # exact k / 1000
    out = model(x_in.to(dtype), t_in, y_in).double()
    if not guided:
        return out
    C = x.shape[1]
    cond, uncond = out.chunk(2)
    eps = uncond[:, :C] + cfg_scale * (cond[:, :C] - uncond[:, :C])
    return torch.cat([eps, cond[:, C:]], dim=1)


@torch.no_grad()
def ddpm(model, noise: torch.Tensor, labels: torch.Tensor, *, steps: int = DEFAULT_STEPS, cfg_scale: float = 1.0,
         guidance_interval: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | list[torch.Generator] | None = None,
         dtype: torch.dtype | None = None, clip_denoised: bool = False,
         diffusion: GaussianDiffusion | None = None) -> torch.Tensor:
    """Ancestral sampling x_T -> x_0 through ``steps`` respaced timesteps (``space_timesteps(1000, steps)``).

    Args:
        model: an epsilon network ``model(x, t, y)`` with t = timestep / 1000 (a DiT), C or 2C output channels.
        noise: (B, C, H, W) standard normal x_T.
        labels: (B,) class labels; ``model.config.null_class`` is the unconditional label.
        steps: number of respaced timesteps (NFE; twice that where guided). DiT uses 250.
        cfg_scale: guidance scale w on epsilon (1 = none).
        guidance_interval: (low, high): guidance only where low <= timestep / 1000 <= high.
        generator: randomness of the ancestral steps.
        dtype: the network's input dtype (default: its parameters' dtype).
        clip_denoised: clamp the implied x_0 to [-1, 1] at each step (DiT samples latents unclipped).
        diffusion: the base process (default: DiT's 1000 linear steps).
    Returns:
        x_0 (B, C, H, W) in ``noise``'s dtype. The last step (timestep 0) adds no noise.
    """
    check_guidance(cfg_scale, guidance_interval)
    null_class = _check_epsilon_model(model)
    dtype = dtype or next(model.parameters()).dtype
    base = diffusion or base_diffusion()
    process = base.respace(space_timesteps(base.num_timesteps, int(steps)))
    null = torch.full_like(labels, null_class)
    x = noise.double()
    for i in reversed(range(process.num_timesteps)):
        timesteps = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        t = float(process.model_time(timesteps[:1]))
        out = _guided_output(model, x, t, labels, null, cfg_scale, tuple(guidance_interval), dtype)
        step = process.p_mean_variance(out, x, timesteps, clip_denoised=clip_denoised)
        x = step.mean
        if i > 0:
            eps = randn_like_batch(x.shape, generator, x.device)
            x = x + torch.exp(0.5 * step.log_variance) * eps
    return x.to(noise.dtype)
