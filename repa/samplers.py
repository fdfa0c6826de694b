"""Samplers with one signature (REFERENCE section 4): Euler and Heun ODE, Euler-Maruyama SDE.

Classifier-free guidance with a guidance interval is written once (``_guided_velocity``); the projector is never
evaluated. The state is integrated in float64 on the reference time grids; the model runs in its own dtype.
"""
from __future__ import annotations

from typing import Callable

import torch

from repa.paths import Path, get_path

SDE_LAST_TIME = 0.04   # the SDE grid stops at 0.04, then takes one noise-free step to 0


def check_guidance(cfg_scale: float, guidance_interval: tuple[float, float]) -> None:
    """Raise ValueError for a guidance scale < 0 or an interval outside [0, 1] or reversed."""
    low, high = guidance_interval
    if not (0.0 <= low <= high <= 1.0):
        raise ValueError(f"guidance interval ({low}, {high}) must satisfy 0 <= low <= high <= 1")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")


def _model_path(model, path: str | Path | None) -> Path:
    if isinstance(path, Path):
        return path
    if path is None:
        train_config = getattr(model, "train_config", None)
        path = train_config.objective.path if train_config is not None else "linear"
    return get_path(path)


def _guided_velocity(model, x: torch.Tensor, t: float, labels: torch.Tensor, null_labels: torch.Tensor,
                     cfg_scale: float, interval: tuple[float, float], dtype: torch.dtype,
                     transform: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None,
                     step_start: float | None = None):
    """Model velocity at (x, t), guided inside the interval: u + w (c - u) applied after ``transform``.

    Whether to guide is decided by the time the step starts at (``step_start``, default ``t``), so both
    evaluations of a Heun step are guided or neither, as in the reference sampler.

    ``transform(v, x, t)`` maps the raw velocity to the quantity that is guided (the SDE guides its whole drift).
    Outside the interval, or for w == 1, only the conditional half is evaluated.
    """
    start = t if step_start is None else step_start
    guided = cfg_scale != 1.0 and interval[0] <= start <= interval[1]
    x_in = torch.cat([x, x]) if guided else x
    y_in = torch.cat([labels, null_labels]) if guided else labels
    t_in = torch.full((x_in.shape[0],), t, device=x.device, dtype=dtype)
    v = model(x_in.to(dtype), t_in, y_in)
    v = v[:, : x.shape[1]].double()                       # learned-variance models: first C channels
    d = transform(v, x_in, t) if transform is not None else v
    if guided:
        cond, uncond = d.chunk(2)
        d = uncond + cfg_scale * (cond - uncond)
    return d


def randn_like_batch(shape, generator, device) -> torch.Tensor:
    """float64 standard normal noise; with a list of generators, row b comes from generator b alone, so samples
    do not depend on the batch they are drawn in."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float64)
                            for g in generator]).to(device)
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float64)


def _null_labels(model, labels: torch.Tensor) -> torch.Tensor:
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("the model has no .config; cannot find its null class for guidance")
    return torch.full_like(labels, config.null_class)


@torch.no_grad()
def euler(model, noise, labels, *, steps=50, cfg_scale=1.0, guidance_interval=(0.0, 1.0), generator=None,
          path=None, heun=False, dtype=None):
    """Euler (or Heun) ODE from t = 1 to 0 on linspace(1, 0, steps + 1); Heun corrects every step but the last."""
    dtype = dtype or next(model.parameters()).dtype
    null = _null_labels(model, labels)
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    x = noise.double()
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        d_cur = _guided_velocity(model, x, t_cur, labels, null, cfg_scale, guidance_interval, dtype)
        x_next = x + (t_next - t_cur) * d_cur
        if heun and i < steps - 1:
            d_next = _guided_velocity(model, x_next, t_next, labels, null, cfg_scale, guidance_interval, dtype,
                                      step_start=t_cur)
            x_next = x + (t_next - t_cur) * 0.5 * (d_cur + d_next)
        x = x_next
    return x.to(noise.dtype)


@torch.no_grad()
def heun(model, noise, labels, **kwargs):
    """Heun's second-order ODE sampler (2 * steps - 1 model evaluations)."""
    return euler(model, noise, labels, heun=True, **kwargs)


@torch.no_grad()
def euler_maruyama(model, noise, labels, *, steps=250, cfg_scale=1.0, guidance_interval=(0.0, 1.0),
                   generator=None, path=None, dtype=None):
    """Euler-Maruyama on the reverse SDE with g(t)^2 = 2t; grid linspace(1, 0.04, steps) then a mean step to 0.

    Drift = v - (1/2) g^2 score (score from the velocity through the path); guidance applies to the whole drift.
    NFE = steps.
    """
    if steps < 2:
        raise ValueError(f"the SDE sampler needs steps >= 2, got {steps}")
    dtype = dtype or next(model.parameters()).dtype
    interp = _model_path(model, path)
    null = _null_labels(model, labels)

    def drift(v, x_in, t):
        return v - 0.5 * (2 * t) * interp.score_from_velocity(v, x_in, torch.tensor(t, dtype=torch.float64))

    times = torch.linspace(1.0, SDE_LAST_TIME, steps, dtype=torch.float64).tolist() + [0.0]
    x = noise.double()
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        dt = t_next - t_cur
        d = _guided_velocity(model, x, t_cur, labels, null, cfg_scale, guidance_interval, dtype, transform=drift)
        x = x + d * dt
        if i < steps - 1:                                 # the last step (0.04 -> 0) adds no noise
            eps = randn_like_batch(x.shape, generator, x.device)
            x = x + (2 * t_cur) ** 0.5 * abs(dt) ** 0.5 * eps
    return x.to(noise.dtype)


def ddpm(model, noise, labels, **kwargs):
    """DDPM ancestral sampling for epsilon networks (DiT, objective iddpm): ``repa.diffusion.sampling.ddpm``."""
    from repa.diffusion.sampling import ddpm as ddpm_sampler
    return ddpm_sampler(model, noise, labels, **kwargs)


SAMPLERS = {"euler": euler, "heun": heun, "sde": euler_maruyama, "ddpm": ddpm}


def sample(model, noise: torch.Tensor, labels: torch.Tensor, *, sampler: str = "euler", steps: int = 50,
           cfg_scale: float = 1.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
           generator: torch.Generator | list[torch.Generator] | None = None,
           path: str | None = None) -> torch.Tensor:
    """Integrate from pure noise (t = 1) to data (t = 0) and return the final sample.

    Args:
        model: a network called as ``model(x, t, y)``; its ``config.null_class`` is the unconditional label.
        noise: (B, C, H, W) standard normal start.
        labels: (B,) class labels.
        sampler: ``euler``, ``heun`` (ODE) or ``sde`` (Euler-Maruyama); see ``SAMPLERS``.
        steps: number of grid steps (NFE: euler steps, heun 2 steps - 1, sde steps), times 2 where guided.
        cfg_scale: classifier-free guidance scale w (1 = no guidance).
        guidance_interval: (low, high): guidance only where low <= t <= high (the paper's best: (0, 0.7)).
        generator: randomness of stochastic samplers: one generator, or a list with one per sample (then each
            sample's noise is independent of the batch composition).
        path: interpolant name; defaults to the model's training path, else ``linear``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known samplers: {', '.join(SAMPLERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_guidance(cfg_scale, guidance_interval)
    from repa.diffusion.sampling import predicts_epsilon
    if (sampler == "ddpm") != predicts_epsilon(model):
        kind = "an epsilon (DDPM) network" if predicts_epsilon(model) else "a velocity network"
        raise ValueError(f"sampler {sampler!r} cannot sample from {kind}; use "
                         f"{'ddpm' if predicts_epsilon(model) else 'euler, heun or sde'}")
    kwargs = dict(steps=steps, cfg_scale=cfg_scale, guidance_interval=tuple(guidance_interval), generator=generator)
    if sampler == "sde":                 # the ODE needs no path: the model predicts dx/dt directly
        kwargs["path"] = path
    return SAMPLERS[sampler](model, noise, labels, **kwargs)
