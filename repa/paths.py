"""Interpolants x_t = alpha(t) x0 + sigma(t) noise (t = 0 data, t = 1 noise) and the velocity/score conversions.

The only place this math lives (SiT, Ma et al. 2024, Sec. 2 and its score-from-velocity relation); training,
sampling and analysis import it.
"""
from __future__ import annotations

import math

import torch


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) times -> (B, 1, 1, ...) broadcastable against ``like``."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.ndim - 1))) if t.ndim else t


class Interpolant:
    """An interpolant defined by alpha(t), sigma(t) and their derivatives."""
    name = ""

    def alpha(self, t): raise NotImplementedError
    def sigma(self, t): raise NotImplementedError
    def d_alpha(self, t): raise NotImplementedError
    def d_sigma(self, t): raise NotImplementedError

    def interpolate(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise."""
        t = _expand(t, x0)
        return self.alpha(t) * x0 + self.sigma(t) * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Target velocity dx_t/dt = alpha'(t) x0 + sigma'(t) noise."""
        t = _expand(t, x0)
        return self.d_alpha(t) * x0 + self.d_sigma(t) * noise

    def score_from_velocity(self, v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Score of p_t from the velocity: ((a/a') v - x) / (s^2 - (a/a') s' s). Undefined at t = 0."""
        t = _expand(t, x_t)
        ratio = self.alpha(t) / self.d_alpha(t)
        s = self.sigma(t)
        return (ratio * v - x_t) / (s ** 2 - ratio * self.d_sigma(t) * s)

    def time_from_sigma_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        """The t where sigma(t)/alpha(t) == ratio (used by lognormal time sampling)."""
        raise NotImplementedError


class LinearPath(Interpolant):
    """alpha = 1 - t, sigma = t: the rectified-flow / SiT linear interpolant; v = noise - x0."""
    name = "linear"

    def alpha(self, t): return 1 - t
    def sigma(self, t): return t
    def d_alpha(self, t): return -torch.ones_like(t)
    def d_sigma(self, t): return torch.ones_like(t)
    def time_from_sigma_ratio(self, ratio): return ratio / (1 + ratio)


class CosinePath(Interpolant):
    """alpha = cos(pi t / 2), sigma = sin(pi t / 2): the variance-preserving trigonometric interpolant."""
    name = "cosine"

    def alpha(self, t): return torch.cos(t * math.pi / 2)
    def sigma(self, t): return torch.sin(t * math.pi / 2)
    def d_alpha(self, t): return -math.pi / 2 * torch.sin(t * math.pi / 2)
    def d_sigma(self, t): return math.pi / 2 * torch.cos(t * math.pi / 2)
    def time_from_sigma_ratio(self, ratio): return 2 / math.pi * torch.atan(ratio)


PATHS: dict[str, Interpolant] = {"linear": LinearPath(), "cosine": CosinePath()}


def get_path(name: str) -> Interpolant:
    """The interpolant called ``name`` (``linear`` or ``cosine``)."""
    if name not in PATHS:
        raise ValueError(f"unknown path {name!r}; known paths: {', '.join(PATHS)}")
    return PATHS[name]
