"""Samplers with one signature: Euler and Heun ODE, Euler-Maruyama SDE, and DDPM for epsilon networks.

Every sampler takes ``(model, noise, labels, *, steps, cfg_scale, guidance_interval, generator, ...)``. Guidance
is ``repa.guidance.GuidedModel`` (written once); the time grids are functions of their own; the projector is
never evaluated. The state is integrated in float64 on the reference time grids (SiT's ``ode`` / ``sde``
samplers as REPA uses them); the model runs in its own dtype.

REG networks (``config.class_token``) generate the image and the teacher's class token together: ``sample``
integrates them as one flat state (B, C*H*W + E) through ``JointModel``, so every sampler and the guidance rule run
unchanged on it (the same step, the same guidance scale and, for the SDE, the same noise schedule for both parts).
"""
from __future__ import annotations

import math

import torch

from repa.checkpoint import LoadedModel
from repa.config import SampleConfig
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


# ---- REG: the image and the class token as one state -----------------------------------------------------------------

def pack_state(x: torch.Tensor, class_token: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) image and (B, E) class token -> the flat joint state (B, C*H*W + E)."""
    return torch.cat([x.flatten(1), class_token.to(x.dtype)], dim=1)


def unpack_state(state: torch.Tensor, image_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat joint state (B, C*H*W + E) -> image (B, *image_shape) and class token (B, E)."""
    size = math.prod(image_shape)
    return state[:, :size].reshape(state.shape[0], *image_shape), state[:, size:]


class JointModel(torch.nn.Module):
    """A REG network as a velocity model of the flat joint state: ``model(state, t, y) -> (B, C*H*W + E)``.

    ``config`` is the network's, so guidance finds the null class and the family's guided channels (all).
    """

    def __init__(self, net: torch.nn.Module, image_shape: tuple[int, ...]):
        super().__init__()
        self.net, self.config, self.image_shape = net, net.config, tuple(image_shape)

    def forward(self, state: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, class_token = unpack_state(state, self.image_shape)
        out = self.net.forward_features(x, t, y, class_token=class_token)
        return pack_state(out.prediction[:, : self.image_shape[0]], out.class_token)


def has_class_token(model) -> bool:
    """Whether ``model`` (a network or a LoadedModel) denoises a class token with the image (REG)."""
    return bool(getattr(getattr(model, "config", None), "class_token", False))


SAMPLERS = {"euler": euler, "heun": heun, "sde": euler_maruyama, "ddpm": ddpm}
PREDICTIONS = {"euler": "velocity", "heun": "velocity", "sde": "velocity", "ddpm": "epsilon"}


def sample(model, noise: torch.Tensor, labels: torch.Tensor, config: SampleConfig | None = None, *,
           sampler: str | None = None, steps: int | None = None, cfg_scale: float | None = None,
           guidance_interval: tuple[float, float] | None = None,
           generator: torch.Generator | list[torch.Generator] | None = None, path: str | None = None,
           null_class: int | None = None, dtype: torch.dtype | None = None,
           guided_channels: int | str | None = None, class_token_noise: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate from pure noise (t = 1) to data (t = 0) and return the final sample.

    Args:
        model: a network ``model(x, t, y)``, or a ``repa.checkpoint.LoadedModel`` (``repa.load_model``), whose
            training interpolant is then the default ``path``.
        noise: (B, C, H, W) standard normal start.
        labels: (B,) class labels.
        config: a ``repa.SampleConfig`` (default ``SampleConfig()``: the papers' sampler for the network, SDE or
            DDPM, 250 steps, no guidance); the keyword arguments below override its fields.
        sampler: ``auto`` (sde for velocity networks, ddpm for epsilon networks), ``euler``, ``heun`` (ODE), ``sde`` (Euler-Maruyama) for velocity networks, ``ddpm`` for epsilon
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
        class_token_noise: REG networks only: the class token's start noise (B, E); default drawn from
            ``generator`` (one row per generator when a list), before any step noise, else from torch's RNG.
            The class token is integrated and guided with the image (see ``sample_with_class_token``).
    """
    settings = sampling_arguments(model, config, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                                  guidance_interval=guidance_interval, guided_channels=guided_channels)
    return _sample(model, noise, labels, **settings, generator=generator, path=path, null_class=null_class,
                   dtype=dtype, class_token_noise=class_token_noise)[0]


def sampling_arguments(model, config: SampleConfig | None = None, **overrides) -> dict:
    """``sampler``, ``steps``, ``cfg_scale``, ``guidance_interval``, ``guided_channels`` from a SampleConfig (default
    ``SampleConfig()``) with the non-None ``overrides``; ``auto`` becomes the network's sampler."""
    config = config if config is not None else SampleConfig()
    if not isinstance(config, SampleConfig):
        raise TypeError(f"config must be a repa.SampleConfig, got {type(config).__name__}")
    net = model.model if isinstance(model, LoadedModel) else model
    prediction = getattr(getattr(net, "config", None), "prediction", "velocity")
    out = dict(sampler=config.sampler, steps=config.steps, cfg_scale=config.cfg_scale,
               guidance_interval=config.guidance_interval, guided_channels=config.guided_channels)
    out.update({k: v for k, v in overrides.items() if v is not None})
    if out["sampler"] == "auto":
        out["sampler"] = SampleConfig().sampler_for(prediction)
    return out


def sample_with_class_token(model, noise: torch.Tensor, labels: torch.Tensor, config: SampleConfig | None = None,
                            **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``sample`` (same arguments) for a REG network (``config.class_token``); returns the image
    (B, C, H, W) and the generated class token (B, E)."""
    if not has_class_token(model.model if isinstance(model, LoadedModel) else model):
        raise ValueError("sample_with_class_token needs a network with a class token (model.class_token, REG)")
    keys = ("sampler", "steps", "cfg_scale", "guidance_interval", "guided_channels")
    settings = sampling_arguments(model, config, **{k: kwargs.pop(k) for k in keys if k in kwargs})
    return _sample(model, noise, labels, **settings, **kwargs)


def _sample(model, noise, labels, *, sampler="euler", steps=50, cfg_scale=1.0, guidance_interval=(0.0, 1.0),
            generator=None, path=None, null_class=None, dtype=None, guided_channels=None, class_token_noise=None):
    """``sample``'s body: returns the image and the class token (None for a network without one)."""
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
    if not has_class_token(model):
        if class_token_noise is not None:
            raise ValueError("class_token_noise is for networks with a class token (model.class_token, REG)")
        return SAMPLERS[sampler](model, noise, labels, **kwargs), None
    # REG: image and class token as one flat state, guided together (the reference's eval uses one scale for both)
    if guided_channels not in (None, "all"):
        raise ValueError("a REG network's image and class token are guided together: guided_channels must be "
                         f"'all' (or left out), got {guided_channels!r}")
    batch, dim = noise.shape[0], model.config.class_token_dim
    if class_token_noise is None:             # drawn before any step noise of the same generators
        class_token_noise = per_sample_noise((batch, dim), generator, noise.device)
    if tuple(class_token_noise.shape) != (batch, dim):
        raise ValueError(f"class_token_noise must be (B, E) = ({batch}, {dim}), got {tuple(class_token_noise.shape)}")
    state = SAMPLERS[sampler](JointModel(model, noise.shape[1:]), pack_state(noise, class_token_noise.to(noise)),
                              labels, **{**kwargs, "guided_channels": None})
    return unpack_state(state, noise.shape[1:])
