"""The denoising objectives REPA is trained with, as a registry the trainer picks from by ``objective.kind``.

- ``interpolant``: SiT's velocity matching on the interpolant x_t = alpha(t) x0 + sigma(t) noise (Ma et al. 2024,
  "SiT"), the paper's main objective;
- ``iddpm``: DiT's improved-DDPM hybrid loss (Nichol & Dhariwal 2021), used by the paper for REPA on DiT.

Every objective has the same signature ``loss(features, x0, labels, encoder_tokens, cfg, *, t, noise,
proj_coeff=None) -> LossOutput`` and adds the same alignment term (``repa.losses.with_alignment``). ``features`` is
a callable ``(x_t, t, y, *, project) -> ModelOutput``: a network's ``forward_features``, or the ``FeaturesView``
that DDP wraps in training. A new objective is one function and one registry entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from repa.config import OBJECTIVE_PREDICTIONS, ConfigError, ObjectiveConfig
from repa.diffusion.objective import iddpm_repa_loss
from repa.losses import LossOutput, denoising_loss, with_alignment
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


def interpolant_loss(features, x0: torch.Tensor, labels: torch.Tensor, encoder_tokens: list[torch.Tensor] | None,
                     cfg: ObjectiveConfig, *, t: torch.Tensor, noise: torch.Tensor,
                     proj_coeff: float | None = None) -> LossOutput:
    """REPA on the interpolant objective for clean inputs x0 (B, C, H, W): velocity MSE + lambda * alignment.

    Args:
        features: ``(x_t, t, y, *, project) -> ModelOutput`` (a network's ``forward_features``).
        encoder_tokens: frozen-encoder tokens of the clean images, one (B, N, E) per encoder; ignored when
            the effective lambda is 0.
        cfg: the objective section (path, lambda).
        t: (B,) diffusion times (``sample_time``); noise: (B, C, H, W) standard normal.
        proj_coeff: the lambda for this step (defaults to ``cfg.proj_coeff``; the trainer passes the scheduled one).
    """
    lam = cfg.proj_coeff if proj_coeff is None else proj_coeff
    path = get_path(cfg.path)
    x_t = path.interpolate(x0, noise, t)
    target = path.velocity(x0, noise, t)
    out = features(x_t, t, labels, project=lam > 0)
    prediction = out.prediction[:, : x0.shape[1]]       # learned-sigma nets: the first C channels
    return with_alignment(denoising_loss(prediction, target).mean(), out, encoder_tokens, lam)


@dataclass(frozen=True)
class Objective:
    """One denoising objective: its loss (the signature above) and how its times are drawn."""
    name: str
    loss: Callable[..., LossOutput]
    sample_time: Callable[..., torch.Tensor] = sample_time

    @property
    def prediction(self) -> str:
        """What a network trained with it predicts (``velocity`` or ``epsilon``)."""
        return OBJECTIVE_PREDICTIONS[self.name]


OBJECTIVES: dict[str, Objective] = {
    "interpolant": Objective("interpolant", interpolant_loss),
    "iddpm": Objective("iddpm", iddpm_repa_loss),       # uniform t, mapped to timesteps floor(1000 t)
}


def get_objective(kind: str) -> Objective:
    """The objective registered as ``kind``."""
    if kind not in OBJECTIVES:
        raise ConfigError(f"objective.kind: unknown {kind!r}; known objectives: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[kind]


def repa_loss(features, x0: torch.Tensor, labels: torch.Tensor, encoder_tokens: list[torch.Tensor] | None,
              cfg: ObjectiveConfig, *, t: torch.Tensor, noise: torch.Tensor,
              proj_coeff: float | None = None) -> LossOutput:
    """One evaluation of the REPA objective ``cfg.kind`` (arguments as ``interpolant_loss``)."""
    return get_objective(cfg.kind).loss(features, x0, labels, encoder_tokens, cfg, t=t, noise=noise,
                                        proj_coeff=proj_coeff)


__all__ = ["OBJECTIVES", "Objective", "get_objective", "interpolant_loss", "repa_loss", "sample_time"]
