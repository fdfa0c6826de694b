"""Classifier-free guidance with a guidance interval, written once for every sampler.

``GuidedModel`` wraps a network ``model(x, t, cond)`` as DiT's ``forward_with_cfg`` does (Ho & Salimans 2022,
"Classifier-Free Diffusion Guidance"; the interval is Kynkaanniemi et al. 2024, "Applying Guidance in a Limited
Interval"): inside the interval the batch is doubled with the condition's null value (``repa.conditions``) and the
output becomes u + w (c - u); outside it, or for w == 1, only the conditional half is evaluated. A condition without
a null value (an unconditional network) refuses guidance in one line. The velocity samplers
(``repa.samplers``) and DDPM ancestral sampling (``repa.diffusion.sampling``) both call it; neither writes the rule.

Which channels are guided is a per-family default (``guided_channels``): DiT's and willisma/SiT's
``forward_with_cfg`` mix only the first 3 channels (their published FIDs were made so), REPA's samplers all of them.

Also here: the per-sample noise that makes a sample independent of the batch it is drawn in.
"""
from __future__ import annotations

import math

import torch

from repa.conditions import ClassLabels, Condition, cat, condition_of
from repa.config import ConfigError, ModelConfig


def check_guidance(cfg_scale: float, guidance_interval: tuple[float, float]) -> None:
    """Raise ConfigError for a guidance scale that is not a finite number >= 0, or an interval outside [0, 1] or
    reversed."""
    low, high = guidance_interval
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high <= 1.0):
        raise ConfigError(f"guidance interval ({low}, {high}) must satisfy 0 <= low <= high <= 1")
    if not math.isfinite(cfg_scale) or cfg_scale < 0 or cfg_scale > MAX_CFG_SCALE:
        raise ConfigError(f"cfg_scale must be a finite number in [0, {MAX_CFG_SCALE:g}], got {cfg_scale}")


MAX_CFG_SCALE = 1e4     # far beyond any useful scale; larger ones overflow the guided output


def model_dtype(model, default: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype a network's inputs are cast to: that of its first parameter, else ``default``."""
    parameters = model.parameters() if isinstance(model, torch.nn.Module) else iter(())
    first = next(parameters, None)
    return first.dtype if first is not None else default


class _UnknownNull:
    """The condition of a network without a ``.config`` when no ``null_class`` is given: guidance is refused."""
    guidable = False

    def null(self, values):
        return None

    def check_guidable(self, cfg_scale: float) -> None:
        if cfg_scale != 1.0:
            raise ConfigError("guidance needs the null (unconditional) class: pass null_class=..., or use a network "
                              "with a .config (repa.build_model, repa.load_model)")


def condition_for(model, null_class: int | None = None) -> Condition:
    """The condition guidance works with: class labels with the given ``null_class``, else the network's own
    (``repa.conditions.condition_of(model.config)``)."""
    if null_class is not None:
        return ClassLabels(int(null_class), dropout=1.0)
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        if config is not None and getattr(config, "null_class", None) is not None:    # a duck-typed test network
            return ClassLabels(int(config.null_class), dropout=1.0)
        return _UnknownNull()
    return condition_of(config)


REFERENCE_GUIDED_CHANNELS = 3     # DiT's and willisma/SiT's forward_with_cfg: ``model_out[:, :3]``


def default_guided_channels(model, channels: int) -> int:
    """How many leading channels of the ``channels`` data channels the family's reference sampler guides.

    DiT (facebookresearch/DiT) and willisma/SiT's released SiT (``config.time_convention == "noise_at_0"``) guide
    the first 3 (of 4 latent channels); REPA's SiT, and a network without a ``.config``, guide all of them.
    """
    config = getattr(model, "config", None)
    reference_three = config is not None and (getattr(config, "family", None) == "DiT"
                                              or getattr(config, "time_convention", None) == "noise_at_0")
    return min(REFERENCE_GUIDED_CHANNELS, channels) if reference_three else channels


def guided_channels_of(model, guided_channels: int | str | None, channels: int) -> int:
    """The number of leading data channels guidance mixes.

    Args:
        model: the network (its ``config`` gives the family default).
        guided_channels: ``None`` (the family default, ``default_guided_channels``), ``"all"``, or k in 1..channels.
        channels: the data channels C (a learned variance beyond them is never guided).
    """
    if guided_channels is None:
        return default_guided_channels(model, channels)
    if guided_channels == "all":
        return channels
    if isinstance(guided_channels, bool) or not isinstance(guided_channels, int) \
            or not 1 <= guided_channels <= channels:
        raise ConfigError(f"guided_channels must be 'all' or an integer in 1..{channels} (the data channels), "
                         f"got {guided_channels!r}")
    return guided_channels


def per_sample_noise(shape, generator, device) -> torch.Tensor:
    """float64 standard normal noise of ``shape``; with a list of generators, row b comes from generator b alone,
    so a sample does not depend on the batch it is drawn in."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ConfigError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float64)
                            for g in generator]).to(device)
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float64)


class GuidedModel:
    """The denoiser every sampler calls: a network with its condition bound and classifier-free guidance inside an
    interval; ``guided(x, t)`` with a float t returns the (guided) output in float64.

    Args:
        model: the network, ``model(x, t, cond) -> (B, C_out, ...)``.
        cond: the condition values of the batch being sampled (class labels (B,), or None: unconditional).
        cfg_scale: guidance scale w (1 = none).
        interval: (low, high): guidance only where low <= the step's start time <= high.
        null_class: the unconditional label of a network without a ``.config`` (default: the network's condition).
        dtype: the dtype the network's inputs are cast to (default: its parameters' dtype, else float32).
        time_dtype: the dtype of the time input (default: ``dtype``; DDPM passes float64 so t = k / 1000 is exact).
        channels: output channels kept (default: all); the velocity samplers keep C and drop a learned variance.
        guided_channels: how many leading channels the guidance mixes (default: all kept channels); the others
            come from the conditional half (DDPM: epsilon is guided, the learned variance is conditional).
        path: the network's training interpolant (``repa.paths``), for samplers that convert its output (the SDE).
        tail_channels, tail_scale: REG's class token: the last ``tail_channels`` channels are mixed with their own
            scale ``tail_scale`` where the rest is guided (Martinser/REG ``samplers.py``: ``cls_cfg_scale`` > 0:
            u + s (c - u); 0: the conditional half alone).
        condition: the condition whose null value guidance mixes against (default ``condition_for(model,
            null_class)``); a text network's, bound to the empty caption (``TextContext.bind``).
    """

    def __init__(self, model, cond, *, cfg_scale: float = 1.0, interval: tuple[float, float] = (0.0, 1.0),
                 null_class: int | None = None, dtype: torch.dtype | None = None,
                 time_dtype: torch.dtype | None = None, channels: int | None = None,
                 guided_channels: int | None = None, path=None, tail_channels: int = 0,
                 tail_scale: float | None = None, condition: Condition | None = None):
        check_guidance(cfg_scale, interval)
        if tail_channels:
            check_guidance(tail_scale, interval)
        self.tail_channels, self.tail_scale = int(tail_channels), tail_scale
        self.model, self.cond, self.path = model, cond, path
        self.cfg_scale, self.interval = float(cfg_scale), (float(interval[0]), float(interval[1]))
        self.dtype = dtype or model_dtype(model)
        self.time_dtype = time_dtype or self.dtype
        self.channels, self.guided_channels = channels, guided_channels
        self.guides = self.cfg_scale != 1.0
        condition = condition or condition_for(model, null_class)
        condition.check_guidable(self.cfg_scale)
        self.null_cond = condition.null(cond) if self.guides else None

    def is_guided(self, t: float) -> bool:
        """Whether a step starting at time ``t`` is guided."""
        return self.guides and self.interval[0] <= t <= self.interval[1]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: float, *, step_start: float | None = None) -> torch.Tensor:
        """The (guided) output at (x, t) in float64, (B, channels, ...).

        Args:
            x: (B, ...) state (any float dtype; cast to ``dtype`` for the network).
            t: the time the network is evaluated at.
            step_start: the time the step starts at (default ``t``): it decides whether to guide, so both
                evaluations of a Heun step are guided or neither, as in the reference sampler.
        """
        guided = self.is_guided(t if step_start is None else step_start)
        x_in = torch.cat([x, x]) if guided else x
        cond_in = cat(self.cond, self.null_cond) if guided else self.cond
        t_in = torch.full((x_in.shape[0],), t, device=x.device, dtype=self.time_dtype)
        out = self.model(x_in.to(self.dtype), t_in, cond_in)
        out = (out if self.channels is None else out[:, : self.channels]).double()
        if not guided:
            return out
        cond, uncond = out.chunk(2)
        if self.tail_channels:               # REG: the class token with its own scale (0: conditional only)
            n = cond.shape[1] - self.tail_channels
            s = self.tail_scale
            tail = uncond[:, n:] + s * (cond[:, n:] - uncond[:, n:]) if s > 0 else cond[:, n:]
            return torch.cat([uncond[:, :n] + self.cfg_scale * (cond[:, :n] - uncond[:, :n]), tail], dim=1)
        k = cond.shape[1] if self.guided_channels is None else self.guided_channels
        mixed = uncond[:, :k] + self.cfg_scale * (cond[:, :k] - uncond[:, :k])
        return torch.cat([mixed, cond[:, k:]], dim=1) if k < cond.shape[1] else mixed


__all__ = ["GuidedModel", "REFERENCE_GUIDED_CHANNELS", "check_guidance", "default_guided_channels",
           "guided_channels_of", "condition_for", "model_dtype", "per_sample_noise"]
