"""Samplers with one signature: Euler and Heun ODE, Euler-Maruyama SDE, and DDPM for epsilon networks.

Every sampler takes ``(model, noise, labels, *, steps, cfg_scale, guidance_interval, generator, ...)``. Guidance
is ``repa.guidance.GuidedModel`` (written once); the time grids are functions of their own; the projector is
never evaluated. The state is integrated in float64 on the reference time grids (SiT's ``ode`` / ``sde``
samplers as REPA uses them); the model runs in its own dtype.
"""
from __future__ import annotations

import torch

from repa.checkpoint import LoadedModel
from repa.diffusion.sampling import ddpm
from repa.guidance import GuidedModel, check_guidance, guided_channels_of, per_sample_noise
from repa.paths import Interpolant, get_path

SDE_LAST_TIME = 0.04   # the SDE grid stops at 0.04, then takes one noise-free step to 0


# ---- time grids ----------------------------------------------------------------------------------------------------

def ode_times(steps: int) -> list[float]:
    """linspace(1, 0, steps + 1): the Euler/Heun grid from noise to data."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()


def sde_times(steps: int, last: float = SDE_LAST_TIME) -> list[float]:
    """linspace(1, last, steps) then 0: the Euler-Maruyama grid (its final step to 0 is noise-free)."""
    return torch.linspace(1.0, last, steps, dtype=torch.float64).tolist() + [0.0]


# ---- integrators ---------------------------------------------------------------------------------------------------

def _velocity_model(model, noise, labels, cfg_scale, guidance_interval, null_class, dtype, guided_channels):
    """The guided velocity: the first C output channels (a learned-variance network's extra C are dropped)."""
    channels = noise.shape[1]
    return GuidedModel(model, labels, cfg_scale=cfg_scale, interval=tuple(guidance_interval), null_class=null_class,
                       dtype=dtype, channels=channels,
                       guided_channels=guided_channels_of(model, guided_channels, channels))


@torch.no_grad()
def euler(model, noise, labels, *, steps=50, cfg_scale=1.0, guidance_interval=(0.0, 1.0), generator=None,
          path=None, heun=False, null_class=None, dtype=None, guided_channels=None):
    """Euler (or Heun) ODE from t = 1 to 0 on ``ode_times(steps)``; Heun corrects every step but the last.

    The network predicts dx/dt directly, so the ODE needs no interpolant (``path`` and ``generator`` are unused).
    """
    velocity = _velocity_model(model, noise, labels, cfg_scale, guidance_interval, null_class, dtype,
                               guided_channels)
    x = noise.double()
    times = ode_times(steps)
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        d_cur = velocity(x, t_cur)
        x_next = x + (t_next - t_cur) * d_cur
        if heun and i < steps - 1:
            d_next = velocity(x_next, t_next, step_start=t_cur)
            x_next = x + (t_next - t_cur) * 0.5 * (d_cur + d_next)
        x = x_next
    return x.to(noise.dtype)


@torch.no_grad()
def heun(model, noise, labels, **kwargs):
    """Heun's second-order ODE sampler (2 * steps - 1 model evaluations)."""
    return euler(model, noise, labels, heun=True, **kwargs)


@torch.no_grad()
def euler_maruyama(model, noise, labels, *, steps=250, cfg_scale=1.0, guidance_interval=(0.0, 1.0),
                   generator=None, path=None, null_class=None, dtype=None, guided_channels=None):
    """Euler-Maruyama on the reverse SDE with g(t)^2 = 2t on ``sde_times(steps)``; NFE = steps.

    Drift = v - (1/2) g^2 score (the score from the velocity through the interpolant ``path``, default linear);
    guidance applies to the whole drift.
    """
    if steps < 2:
        raise ValueError(f"the SDE sampler needs steps >= 2, got {steps}")
    interp = path if isinstance(path, Interpolant) else get_path(path or "linear")
    drift_model = _velocity_model(model, noise, labels, cfg_scale, guidance_interval, null_class, dtype,
                                  guided_channels)

    def drift(v, x_in, t):
        return v - 0.5 * (2 * t) * interp.score_from_velocity(v, x_in, torch.tensor(t, dtype=torch.float64))

    times = sde_times(steps)
    x = noise.double()
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        dt = t_next - t_cur
        x = x + drift_model(x, t_cur, transform=drift) * dt
        if i < steps - 1:                                 # the last step (0.04 -> 0) adds no noise
            eps = per_sample_noise(x.shape, generator, x.device)
            x = x + (2 * t_cur) ** 0.5 * abs(dt) ** 0.5 * eps
    return x.to(noise.dtype)


SAMPLERS = {"euler": euler, "heun": heun, "sde": euler_maruyama, "ddpm": ddpm}
PREDICTIONS = {"euler": "velocity", "heun": "velocity", "sde": "velocity", "ddpm": "epsilon"}


def sample(model, noise: torch.Tensor, labels: torch.Tensor, *, sampler: str = "euler", steps: int = 50,
           cfg_scale: float = 1.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
           generator: torch.Generator | list[torch.Generator] | None = None, path: str | None = None,
           null_class: int | None = None, dtype: torch.dtype | None = None,
           guided_channels: int | str | None = None) -> torch.Tensor:
    """Integrate from pure noise (t = 1) to data (t = 0) and return the final sample.

    Args:
        model: a network ``model(x, t, y)``, or a ``repa.checkpoint.LoadedModel`` (``repa.load_model``), whose
            training interpolant is then the default ``path``.
        noise: (B, C, H, W) standard normal start.
        labels: (B,) class labels.
        sampler: ``euler``, ``heun`` (ODE), ``sde`` (Euler-Maruyama) for velocity networks, ``ddpm`` for epsilon
            networks (``model.config.prediction``); see ``SAMPLERS``.
        steps: number of grid steps (NFE: euler steps, heun 2 steps - 1, sde and ddpm steps), times 2 where guided.
        cfg_scale: classifier-free guidance scale w (1 = no guidance).
        guidance_interval: (low, high): guidance only where low <= t <= high (the paper's best: (0, 0.7)).
        generator: randomness of stochastic samplers: one generator, or a list with one per sample (then each
            sample's noise is independent of the batch composition).
        path: interpolant of the SDE's score (``linear`` or ``cosine``); default the training one, else linear.
        null_class: the unconditional label (default ``model.config.null_class``; only needed when guiding).
        dtype: the network's input dtype (default: its parameters' dtype, else float32).
        guided_channels: ``"all"`` or k: guide only the first k data channels, the others come from the
            conditional half. Default: the family's reference (``repa.guidance.default_guided_channels``: 3 for
            DiT and willisma/SiT's released SiT, as their ``forward_with_cfg``; all for REPA's SiT).
    """
    if isinstance(model, LoadedModel):        # its training interpolant is the default path
        path = path or model.interpolant
        model = model.model
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known samplers: {', '.join(SAMPLERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_guidance(cfg_scale, guidance_interval)
    prediction = getattr(getattr(model, "config", None), "prediction", None)
    if prediction is not None and prediction != PREDICTIONS[sampler]:
        usable = ", ".join(name for name, kind in PREDICTIONS.items() if kind == prediction)
        raise ValueError(f"sampler {sampler!r} needs a {PREDICTIONS[sampler]} network, but this one predicts "
                         f"{prediction} (model.prediction); use {usable}")
    kwargs = dict(steps=steps, cfg_scale=cfg_scale, guidance_interval=tuple(guidance_interval), generator=generator,
                  null_class=null_class, dtype=dtype, guided_channels=guided_channels)
    if sampler == "sde":
        kwargs["path"] = path
    return SAMPLERS[sampler](model, noise, labels, **kwargs)
