"""Samplers with one signature, ``sampler(denoiser, x, times, generator) -> x`` (k-diffusion's contract), and the
one function that resolves sampling settings and runs them (``sample``).

- ``denoiser`` is ``repa.guidance.GuidedModel``: the network with its condition bound and guidance applied (written
  once, outside the samplers); ``denoiser(x, t)`` returns its float64 output, ``denoiser.path`` is the network's
  training interpolant.
- ``x`` is the float64 start state, ``times`` the sampler's own time grid from noise (t = 1) to data (t = 0),
  ``generator`` the randomness of stochastic samplers (one generator, or one per sample).

Each registry entry (``SAMPLERS``) owns its time grid, the prediction it needs (velocity or epsilon), and whether
it is the ``auto`` choice for that prediction. The state is integrated in float64 on the reference time grids
(SiT's ``ode`` / ``sde`` samplers as REPA uses them); the network runs in its own dtype; the projector is never
evaluated.

REG networks (``config.class_token``) generate the image and the teacher's class token together: ``sample``
integrates them as one flat state (B, C*H*W + E) through ``JointModel``, so every sampler and the guidance rule run
unchanged on it (the same step and, for the SDE, the same noise schedule for both parts); the class token has its
own guidance scale, ``cls_cfg_scale`` (default: the image's).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch

from repa.checkpoint import LoadedModel
from repa.config import ConfigError, SampleConfig
from repa.diffusion.sampling import ddpm, ddpm_times
from repa.guidance import MAX_CFG_SCALE, GuidedModel, check_guidance, guided_channels_of, per_sample_noise
from repa.paths import get_path

SDE_LAST_TIME = 0.04   # the SDE grid stops at 0.04, then takes one noise-free step to 0


# ---- time grids ----------------------------------------------------------------------------------------------------

def ode_times(steps: int) -> list[float]:
    """linspace(1, 0, steps + 1): the Euler/Heun grid from noise to data."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()


def sde_times(steps: int, last: float = SDE_LAST_TIME) -> list[float]:
    """linspace(1, last, steps) then 0: the Euler-Maruyama grid (its final step to 0 is noise-free)."""
    if steps < 2:
        raise ConfigError(f"the SDE sampler needs steps >= 2, got {steps}")
    return torch.linspace(1.0, last, steps, dtype=torch.float64).tolist() + [0.0]


# ---- integrators ---------------------------------------------------------------------------------------------------

@torch.no_grad()
def euler(denoiser, x: torch.Tensor, times: list[float], generator=None) -> torch.Tensor:
    """Euler ODE along ``times``: the network predicts dx/dt directly, so it needs no interpolant."""
    for t_cur, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t_cur) * denoiser(x, t_cur)
    return x


@torch.no_grad()
def heun(denoiser, x: torch.Tensor, times: list[float], generator=None) -> torch.Tensor:
    """Heun's second-order ODE along ``times``: every step but the last is corrected (2 * steps - 1 evaluations);
    both evaluations of a step are guided or neither, by the step's start time (the reference sampler)."""
    last = len(times) - 2
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        d_cur = denoiser(x, t_cur)
        x_next = x + (t_next - t_cur) * d_cur
        if i < last:
            d_next = denoiser(x_next, t_next, step_start=t_cur)
            x_next = x + (t_next - t_cur) * 0.5 * (d_cur + d_next)
        x = x_next
    return x


@torch.no_grad()
def euler_maruyama(denoiser, x: torch.Tensor, times: list[float], generator=None) -> torch.Tensor:
    """Euler-Maruyama on the reverse SDE with g(t)^2 = 2t along ``times`` (``sde_times``); NFE = steps.

    Drift = v - (1/2) g^2 score, the score from the guided velocity through the interpolant ``denoiser.path``
    (default linear); the drift is affine in v, so guiding v is guiding the drift. The last step adds no noise.
    """
    path = denoiser.path if denoiser.path is not None else get_path("linear")
    last = len(times) - 2
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        dt = t_next - t_cur
        v = denoiser(x, t_cur)
        score = path.score_from_velocity(v, x, torch.tensor(t_cur, dtype=torch.float64))
        x = x + (v - 0.5 * (2 * t_cur) * score) * dt
        if i < last:
            eps = per_sample_noise(x.shape, generator, x.device)
            x = x + (2 * t_cur) ** 0.5 * abs(dt) ** 0.5 * eps
    return x


# ---- the registry --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sampler:
    """One sampler: ``run(denoiser, x, times, generator)``, its time grid, and the network it needs.

    ``prediction`` is what the network must predict; ``auto`` makes it the choice of ``sampler="auto"`` for such
    networks; ``stochastic`` samplers draw noise at every step; ``data_channels_only`` drops the outputs beyond the
    data channels (a learned variance) before the sampler sees them; ``time_dtype`` is the dtype of the time input
    (DDPM: float64, so that t = k / 1000 embeds exactly).
    """
    name: str
    run: Callable[..., torch.Tensor]
    times: Callable[[int], list[float]]
    prediction: str
    stochastic: bool = False
    auto: bool = False
    data_channels_only: bool = True
    time_dtype: torch.dtype | None = None


SAMPLERS: dict[str, Sampler] = {
    "euler": Sampler("euler", euler, ode_times, "velocity"),
    "heun": Sampler("heun", heun, ode_times, "velocity"),
    "sde": Sampler("sde", euler_maruyama, sde_times, "velocity", stochastic=True, auto=True),
    "ddpm": Sampler("ddpm", ddpm, ddpm_times, "epsilon", stochastic=True, auto=True, data_channels_only=False,
                    time_dtype=torch.float64),
}


def auto_sampler(prediction: str) -> str:
    """The sampler ``auto`` means for a network predicting ``prediction`` (the papers' evaluation samplers)."""
    return next(name for name, s in SAMPLERS.items() if s.auto and s.prediction == prediction)


# ---- settings, resolved once -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sampling:
    """Sampling settings resolved for one network: the sampler entry (``auto`` resolved), steps, guidance."""
    sampler: Sampler
    steps: int
    cfg_scale: float
    guidance_interval: tuple[float, float]
    guided_channels: int | str | None
    cls_cfg_scale: float | None = None       # REG: the class token's own scale (None: cfg_scale)

    def as_settings(self) -> dict:
        """The JSON-ready settings that determine the samples (for ``settings.json``)."""
        settings = {"sampler": self.sampler.name, "steps": self.steps, "cfg_scale": self.cfg_scale,
                    "guidance_interval": [float(v) for v in self.guidance_interval]}
        if self.cls_cfg_scale is not None:         # absent when default: older settings files still match
            settings["cls_cfg_scale"] = self.cls_cfg_scale
        return settings


def _network(model):
    return model.model if isinstance(model, LoadedModel) else model


def check_sample_config(config: SampleConfig) -> None:
    """Raise ConfigError for an invalid SampleConfig field (before any model is loaded)."""
    if not isinstance(config, SampleConfig):
        raise ConfigError(f"config must be a repa.SampleConfig, got {type(config).__name__}")
    if config.sampler != "auto" and config.sampler not in SAMPLERS:
        raise ConfigError(f"sampler: unknown {config.sampler!r}; known samplers: auto, {', '.join(SAMPLERS)}")
    if isinstance(config.steps, bool) or not isinstance(config.steps, int) or config.steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {config.steps!r}")
    for name in ("cfg_scale", "guidance_low", "guidance_high"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
    check_guidance(config.cfg_scale, config.guidance_interval)
    c = config.cls_cfg_scale
    if c is not None:
        if isinstance(c, bool) or not isinstance(c, (int, float)):
            raise ConfigError(f"cls_cfg_scale must be a number, got {c!r}")
        if not math.isfinite(c) or not 0 <= c <= MAX_CFG_SCALE:
            raise ConfigError(f"cls_cfg_scale must be a finite number in [0, {MAX_CFG_SCALE:g}] (0: the class token "
                              f"is not guided), got {c}")
    g = config.guided_channels
    if g is not None and g != "all" and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
        raise ConfigError(f"guided_channels must be 'all' or an integer >= 1, got {g!r}")


def resolve_sampling(model, config: SampleConfig | None = None, **overrides) -> Sampling:
    """The settings of ``config`` (default ``SampleConfig()``) with the non-None ``overrides`` (``sampler``,
    ``steps``, ``cfg_scale``, ``guidance_interval``, ``guided_channels``), checked and resolved for ``model`` (a
    network or a LoadedModel; None checks the settings alone): ``auto`` becomes the network's sampler, a sampler
    that needs another prediction is refused."""
    config = config if config is not None else SampleConfig()
    interval = overrides.pop("guidance_interval", None)
    if interval is not None:
        overrides.update(guidance_low=interval[0], guidance_high=interval[1])
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SampleConfig)}
    if unknown:
        raise TypeError(f"unknown sampling setting(s) {sorted(unknown)}")
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None}) \
        if isinstance(config, SampleConfig) else config
    check_sample_config(config)
    prediction = getattr(getattr(_network(model), "config", None), "prediction", None)
    if config.cls_cfg_scale is not None and model is not None and not has_class_token(model):
        raise ConfigError(f"cls_cfg_scale={config.cls_cfg_scale} is the class token's guidance scale of a REG network "
                          "(model.class_token); this network has no class token: leave cls_cfg_scale out")
    name = config.sampler
    if name == "auto":
        name = auto_sampler(prediction or "velocity")
    entry = SAMPLERS[name]
    if prediction is not None and prediction != entry.prediction:
        usable = ", ".join(n for n, s in SAMPLERS.items() if s.prediction == prediction)
        raise ConfigError(f"sampler {name!r} needs a {entry.prediction} network, but this one predicts {prediction} "
                          f"(model.prediction); use {usable}")
    net = _network(model)
    data_channels = getattr(getattr(net, "config", None), "in_channels", None)
    if data_channels is not None and config.guided_channels is not None:   # before any sample or file is made
        if has_class_token(model):
            if config.guided_channels != "all":
                raise ConfigError("a REG network's image and class token are guided together: guided_channels must "
                                  f"be 'all' (or left out), got {config.guided_channels!r}")
        else:
            guided_channels_of(net, config.guided_channels, data_channels)
    cls = None if config.cls_cfg_scale is None else float(config.cls_cfg_scale)
    return Sampling(entry, config.steps, float(config.cfg_scale), config.guidance_interval, config.guided_channels,
                    cls)


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

    ``config`` is the network's, so guidance finds the condition and the family's guided channels (all).
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
    return bool(getattr(getattr(_network(model), "config", None), "class_token", False))


# ---- the one sampling path -------------------------------------------------------------------------------------------

def run_sampling(model, noise: torch.Tensor, cond, settings: Sampling, *, generator=None, path=None,
                 null_class: int | None = None, dtype: torch.dtype | None = None,
                 class_token_noise: torch.Tensor | None = None,
                 condition=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Integrate resolved ``settings`` from ``noise`` (t = 1) to data (t = 0): guidance wraps the network once
    (against ``condition``'s null value, default the network's), then the sampler runs. Returns the sample (noise's
    dtype) and REG's class token (None without one)."""
    if isinstance(model, LoadedModel):        # its training interpolant is the default path
        path = path or model.interpolant
        model = model.model
    path = get_path(path) if isinstance(path, str) else path
    sampler = settings.sampler
    x, tail = noise, {}
    if has_class_token(model):   # REG: image and class token as one flat state, guided together
        if settings.guided_channels not in (None, "all"):
            raise ConfigError("a REG network's image and class token are guided together: guided_channels must be "
                              f"'all' (or left out), got {settings.guided_channels!r}")
        batch, dim = noise.shape[0], model.config.class_token_dim
        if class_token_noise is None:             # drawn before any step noise of the same generators
            class_token_noise = per_sample_noise((batch, dim), generator, noise.device)
        if tuple(class_token_noise.shape) != (batch, dim):
            raise ConfigError(f"class_token_noise must be (B, E) = ({batch}, {dim}), got "
                              f"{tuple(class_token_noise.shape)}")
        model, x, guided_channels = JointModel(model, noise.shape[1:]), pack_state(noise, class_token_noise), None
        if settings.cls_cfg_scale is not None:      # the class token's own scale (Martinser/REG's cls_cfg_scale)
            tail = dict(tail_channels=dim, tail_scale=settings.cls_cfg_scale)
    else:
        if class_token_noise is not None:
            raise ConfigError("class_token_noise is for networks with a class token (model.class_token, REG)")
        guided_channels = guided_channels_of(model, settings.guided_channels, noise.shape[1])
    denoiser = GuidedModel(model, cond, cfg_scale=settings.cfg_scale, interval=settings.guidance_interval,
                           null_class=null_class, dtype=dtype, time_dtype=sampler.time_dtype,
                           channels=x.shape[1] if sampler.data_channels_only else None,
                           guided_channels=guided_channels, path=path, condition=condition, **tail)
    out = sampler.run(denoiser, x.double(), sampler.times(settings.steps), generator).to(noise.dtype)
    if x is noise:
        return out, None
    return unpack_state(out, noise.shape[1:])


def sample(model, noise: torch.Tensor, cond, config: SampleConfig | None = None, *,
           sampler: str | None = None, steps: int | None = None, cfg_scale: float | None = None,
           guidance_interval: tuple[float, float] | None = None,
           generator: torch.Generator | list[torch.Generator] | None = None, path: str | None = None,
           null_class: int | None = None, dtype: torch.dtype | None = None,
           guided_channels: int | str | None = None, class_token_noise: torch.Tensor | None = None,
           cls_cfg_scale: float | None = None, condition=None) -> torch.Tensor:
    """Integrate from pure noise (t = 1) to data (t = 0) and return the final sample.

    Args:
        model: a network ``model(x, t, cond)``, or a ``repa.checkpoint.LoadedModel`` (``repa.load_model``), whose
            training interpolant is then the default ``path``.
        noise: (B, C, H, W) standard normal start.
        cond: the condition: (B,) class labels, or None for an unconditional network.
        config: a ``repa.SampleConfig`` (default ``SampleConfig()``: the papers' sampler for the network, SDE or
            DDPM, 250 steps, no guidance); the keyword arguments below override its fields.
        sampler: ``auto`` (the network's: sde for velocity, ddpm for epsilon), ``euler``, ``heun`` (ODE), ``sde``
            (Euler-Maruyama) for velocity networks, ``ddpm`` for epsilon networks; see ``SAMPLERS``.
        steps: number of grid steps (NFE: euler steps, heun 2 steps - 1, sde and ddpm steps), times 2 where guided.
        cfg_scale: classifier-free guidance scale w (1 = no guidance).
        guidance_interval: (low, high): guidance only where low <= t <= high (the paper's best: (0, 0.7)).
        generator: randomness of stochastic samplers: one generator, or a list with one per sample (then each
            sample's noise is independent of the batch composition).
        path: interpolant of the SDE's score (``linear`` or ``cosine``); default the training one, else linear.
        null_class: the unconditional label of a network without a ``.config`` (only needed when guiding).
        dtype: the network's input dtype (default: its parameters' dtype, else float32).
        guided_channels: ``"all"`` or k: guide only the first k data channels, the others come from the
            conditional half. Default: the family's reference (``repa.guidance.default_guided_channels``: 3 for
            DiT and willisma/SiT's released SiT, as their ``forward_with_cfg``; all for REPA's SiT).
        class_token_noise: REG networks only: the class token's start noise (B, E); default drawn from
            ``generator`` (one row per generator when a list), before any step noise, else from torch's RNG.
            The class token is integrated and guided with the image (see ``sample_with_class_token``).
        cls_cfg_scale: REG networks only: the class token's guidance scale where the image is guided (default
            ``cfg_scale``; 0: conditional only, Martinser/REG's meaning); refused for other networks.
        condition: the condition guidance takes its null value from (default the network's); a text network
            (MMDiT, ``cond`` the caption tokens (B, L, D)) guides with ``TextContext.bind(empty_context)``.
    """
    settings = resolve_sampling(model, config, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                                guidance_interval=guidance_interval, guided_channels=guided_channels,
                                cls_cfg_scale=cls_cfg_scale)
    check_inputs(model, noise, cond)
    return run_sampling(model, noise, cond, settings, generator=generator, path=path, null_class=null_class,
                        dtype=dtype, class_token_noise=class_token_noise, condition=condition)[0]


def check_inputs(model, noise, cond) -> None:
    """ConfigError for start noise or labels that do not fit the network (shape, dtype, label range), when the
    network has a ``.config`` to check against (a bare callable is trusted)."""
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.ndim != 4:
        raise ConfigError(f"noise must be a float tensor (B, C, H, W), got "
                          f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}")
    cfg = getattr(_network(model), "config", None)
    if cfg is not None and hasattr(cfg, "in_channels"):
        want = (cfg.in_channels, cfg.input_size, cfg.input_size)
        if tuple(noise.shape[1:]) != want:
            raise ConfigError(f"noise must be (B, {', '.join(map(str, want))}) for {cfg.name}, got {tuple(noise.shape)}")
    if cond is None:
        return
    if cfg is not None and getattr(cfg, "family", None) == "MMDiT":      # caption tokens (B, L, context_dim)
        if not isinstance(cond, torch.Tensor) or not cond.is_floating_point() or cond.ndim != 3 \
                or cond.shape[0] != noise.shape[0] or cond.shape[-1] != cfg.context_dim:
            raise ConfigError(f"cond must be caption tokens ({noise.shape[0]}, L, {cfg.context_dim}) float for "
                              f"{cfg.name}, got {tuple(getattr(cond, 'shape', ()))}")
        return
    if not isinstance(cond, torch.Tensor) or cond.is_floating_point() or cond.is_complex() or cond.dtype == torch.bool \
            or tuple(cond.shape) != (noise.shape[0],):
        raise ConfigError(f"cond must be an integer tensor of {noise.shape[0]} labels (one per noise row), got "
                          f"{cond.dtype if isinstance(cond, torch.Tensor) else type(cond).__name__} "
                          f"{tuple(getattr(cond, 'shape', ()))}")
    if cfg is not None and getattr(cfg, "num_classes", None) is not None and cond.numel():
        high = cfg.num_classes + (cfg.class_dropout > 0)      # the null label where guidance has one
        if int(cond.min()) < 0 or int(cond.max()) >= high:
            raise ConfigError(f"cond labels must lie in 0..{high - 1} for {cfg.name}, got "
                              f"{int(cond.min())}..{int(cond.max())}")


def sample_with_class_token(model, noise: torch.Tensor, cond, config: SampleConfig | None = None, *,
                            sampler=None, steps=None, cfg_scale=None, guidance_interval=None, guided_channels=None,
                            cls_cfg_scale=None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``sample`` (same arguments) for a REG network (``config.class_token``); returns the image
    (B, C, H, W) and the generated class token (B, E)."""
    if not has_class_token(model):
        raise ConfigError("sample_with_class_token needs a network with a class token (model.class_token, REG)")
    settings = resolve_sampling(model, config, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                                guidance_interval=guidance_interval, guided_channels=guided_channels,
                                cls_cfg_scale=cls_cfg_scale)
    check_inputs(model, noise, cond)
    return run_sampling(model, noise, cond, settings, **kwargs)


__all__ = ["SAMPLERS", "Sampler", "Sampling", "auto_sampler", "check_sample_config", "euler", "euler_maruyama",
           "has_class_token", "heun", "ode_times", "resolve_sampling", "run_sampling", "sample",
           "sample_with_class_token", "sde_times"]
