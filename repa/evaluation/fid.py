"""Frechet distance between Gaussians and streaming feature statistics (float64).

The distance is the ADM evaluator's (``FIDStatistics.frechet_distance``): ``|mu1 - mu2|^2 + tr(S1) + tr(S2) -
2 tr sqrtm(S1 S2)``; the trace of the square root is computed exactly through symmetric eigendecompositions
(``trace_sqrt_product``), which needs no ``eps`` offset for singular covariances. Statistics use the unbiased covariance (``numpy.cov``, ddof = 1) as ADM does.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from repa.config import ConfigError


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    Args:
        mu1, mu2: (D,) means.
        sigma1, sigma2: (D, D) covariances.
    Returns:
        The squared Frechet distance (what FID reports) as a Python float.
    Raises:
        ValueError: the shapes disagree.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"means have different shapes {mu1.shape} and {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"covariances {sigma1.shape} and {sigma2.shape} do not match the means {mu1.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrtm(S1 S2) for covariances S1, S2, through two symmetric eigendecompositions.

    S1 S2 is similar to R S2 R with R = S1^(1/2) (symmetric PSD), so its square root has the trace
    sum(sqrt(eig(R S2 R))). This is the quantity ADM's ``sqrtm`` computes, ~10x faster for D = 2048 and stable for
    singular covariances (no eps offset needed); tiny negative eigenvalues from round-off are clipped to zero.
    """
    w1, v1 = np.linalg.eigh(sigma1)
    root = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    inner = root @ sigma2 @ root
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(eig, 0, None)).sum())



class FeatureStats:
    """Running mean and covariance of feature vectors, accumulated in float64 batch by batch.

    Keeps the count, the sum and the sum of outer products of ``x - shift`` (``shift`` = the first batch's mean,
    which removes most of the cancellation in ``E[xx^T] - mu mu^T``). ``mean`` and ``cov`` equal ``x.mean(0)`` and
    ``numpy.cov(x, rowvar=False)`` of all rows seen.
    """

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.count = 0
        self._shift = self._sum = self._outer = None

    def update(self, features) -> None:
        """Add a batch of features (B, D): numpy array or torch tensor (any float dtype, any device)."""
        if isinstance(features, torch.Tensor):
            features = features.detach().to("cpu", torch.float64).numpy()
        x = np.asarray(features, np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be (B, D), got shape {x.shape}")
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise ValueError(f"features have dimension {x.shape[1]}, the statistics {self.dim}")
        if x.shape[0] == 0:
            return
        if self._shift is None:
            self._shift = x.mean(axis=0)
            self._sum = np.zeros(self.dim)
            self._outer = np.zeros((self.dim, self.dim))
        xc = x - self._shift                                   # (B, D)
        self._sum += xc.sum(axis=0)
        self._outer += xc.T @ xc
        self.count += x.shape[0]

    def merge(self, other: "FeatureStats") -> None:
        """Add the rows accumulated by ``other`` (e.g. another rank's) to these statistics."""
        if other.count == 0:
            return
        if self.count == 0:
            self.dim, self.count = other.dim, other.count
            self._shift, self._sum, self._outer = other._shift.copy(), other._sum.copy(), other._outer.copy()
            return
        delta = other._shift - self._shift                     # re-centre the other's sums on our shift
        n = other.count
        self._outer += other._outer + np.outer(other._sum, delta) + np.outer(delta, other._sum) \
            + n * np.outer(delta, delta)
        self._sum += other._sum + n * delta
        self.count += n

    @property
    def mean(self) -> np.ndarray:
        """(D,) float64 mean of all rows."""
        self._require(1)
        return self._shift + self._sum / self.count

    @property
    def cov(self) -> np.ndarray:
        """(D, D) float64 unbiased covariance (ddof = 1), as ``numpy.cov(x, rowvar=False)``."""
        self._require(2)
        m = self._sum / self.count
        cov = (self._outer - self.count * np.outer(m, m)) / (self.count - 1)
        return (cov + cov.T) / 2                               # exact symmetry despite rounding

    def _require(self, n: int) -> None:
        if self.count < n:
            raise ValueError(f"feature statistics need at least {n} samples, got {self.count}")


def save_stats(path: str | os.PathLike, **arrays) -> None:
    """Write named arrays (``mu``, ``sigma``, ``mu_s``, ...; scalars and strings too) to ``path`` atomically."""
    from repa.utils import atomic_write
    atomic_write(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))


def load_stats(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a statistics ``.npz`` written by ``save_stats`` (or an ADM reference batch) into a dict of arrays.

    Raises FileNotFoundError / ValueError naming the file when it is missing or lacks ``mu`` and ``sigma``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = [k for k in data.files if k != "arr_0"]          # never load a reference batch's images here
            out = {k: data[k] for k in keys}
    except (ValueError, EOFError, zipfile.BadZipFile, OSError) as exc:    # truncated, not an .npz, pickled
        raise ConfigError(f"{path}: not a readable .npz of statistics ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(out, dict) or "mu" not in out or "sigma" not in out:
        raise ConfigError(f"{path}: a statistics file needs arrays 'mu' and 'sigma', found {sorted(out)}")
    return out
