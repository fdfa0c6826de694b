"""Representation-alignment metrics between two feature matrices of the same N samples.

All functions take ``a`` (N, D1) and ``b`` (N, D2), torch tensors or numpy arrays, compute in float64 and return a
Python float. The kernels are linear (inner products of the rows); callers who want cosine kernels, as the
Platonic Representation Hypothesis pipeline and ``repa analyze`` use, L2-normalise the rows first.

- ``cka``: linear centered kernel alignment (Kornblith et al. 2019), with the biased HSIC estimator (the trace of
  the doubly centred kernels, Gretton et al. 2005) or the unbiased one (Song et al. 2012, Eq. 5).
- ``mutual_knn``: the mean fraction of shared k nearest neighbours (Huh et al. 2024, Sec. 2.3).
- ``cknna``: centered kernel nearest-neighbour alignment (Huh et al. 2024, Appendix A), the metric REPA reports:
  the unbiased HSIC of the two kernels restricted to mutual k-nearest-neighbour pairs, normalised by the same
  quantity of each kernel restricted to its own k-nearest-neighbour pairs. This follows the metric authors' released
  implementation (docs/ANALYSIS.md compares it with the paper's prose formula). With ``topk = N - 1`` every
  off-diagonal pair is kept and CKNNA equals unbiased CKA.
"""
from __future__ import annotations

import numpy as np
import torch


# ---- helpers -----------------------------------------------------------------------------------------------------

def _as_float64(x, name: str) -> torch.Tensor:
    """A 2-D float64 torch tensor of ``x`` (numpy or torch, on its own device); clear errors otherwise."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a (N, D) feature matrix, got shape {tuple(x.shape)}; pool or flatten "
                         "the token axis first")
    x = x.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or infinity")
    return x


def _pair(a, b, min_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both matrices as float64 on a's device, after checking that they describe the same samples."""
    a, b = _as_float64(a, "a"), _as_float64(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must hold the same samples: a has N={a.shape[0]} rows, b has N={b.shape[0]}")
    if a.shape[0] < min_samples:
        raise ValueError(f"need at least {min_samples} samples, got N={a.shape[0]}")
    return a, b.to(a.device)


def _check_topk(topk: int, n: int) -> None:
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)):
        raise TypeError(f"topk must be an integer, got {topk!r}")
    if not 1 <= topk < n:
        raise ValueError(f"topk must satisfy 1 <= topk < N (N={n} samples), got topk={topk}")


def knn_mask(gram: torch.Tensor, topk: int) -> torch.Tensor:
    """(N, N) bool: row i marks the ``topk`` samples j != i with the largest kernel value gram[i, j]."""
    scores = gram.clone()
    scores.fill_diagonal_(float("-inf"))                       # a sample is never its own neighbour
    neighbours = scores.topk(topk, dim=1).indices               # (N, topk)
    mask = torch.zeros_like(gram, dtype=torch.bool)
    return mask.scatter_(1, neighbours, True)


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator of Song et al. (2012, Eq. 5) for (N, N) kernels; diagonals are ignored.

    HSIC = [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2 1'K~L~1 / (n-2)] / (n (n-3)), K~ = K with zero diagonal.
    Written without forming K~ L~, so the kernels need not be symmetric (masked kernels are not).
    """
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples, got {n}")
    k = k.clone().fill_diagonal_(0)
    l = l.clone().fill_diagonal_(0)
    trace_kl = (k * l.T).sum()                                  # tr(K~ L~)
    cross = k.sum(dim=0) @ l.sum(dim=1)                         # 1' K~ L~ 1
    value = trace_kl + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)
    return value / (n * (n - 3))


def _normalised(cross: torch.Tensor, self_a: torch.Tensor, self_b: torch.Tensor, what: str) -> float:
    """cross / sqrt(self_a self_b), refusing a degenerate (non-positive) self term with a clear message."""
    for name, value in (("a", self_a), ("b", self_b)):
        if not value > 0:
            raise ValueError(f"{what} is undefined: the self-similarity term of {name} is {value.item():.3g} "
                             f"(constant or degenerate features?)")
    return float(cross / torch.sqrt(self_a * self_b))


# ---- metrics -----------------------------------------------------------------------------------------------------

def cka(a, b, unbiased: bool = False) -> float:
    """Linear centered kernel alignment between the rows of ``a`` and ``b``.

    Args:
        a: (N, D1) features; b: (N, D2) features of the same N samples (torch or numpy).
        unbiased: use the unbiased HSIC estimator (Song et al. 2012; needs N >= 4) instead of the biased one.
    Returns:
        CKA in [0, 1] for the biased estimator (the unbiased one can dip slightly below 0 for independent data).
        Invariant to orthogonal transforms and isotropic scaling of either side.
    Raises:
        ValueError: different N, too few samples, non-finite or constant features.
    """
    a, b = _pair(a, b, min_samples=4 if unbiased else 2)
    if unbiased:
        k, l = a @ a.T, b @ b.T                                 # (N, N) linear kernels
        return _normalised(hsic_unbiased(k, l), hsic_unbiased(k, k), hsic_unbiased(l, l), "unbiased CKA")
    # Biased HSIC: tr(HKH HLH) = ||A_c' B_c||_F^2 with column-centred features; the 1/(n-1)^2 cancels.
    a_c, b_c = a - a.mean(dim=0), b - b.mean(dim=0)
    cross = (a_c.T @ b_c).square().sum()
    return _normalised(cross, (a_c.T @ a_c).square().sum(), (b_c.T @ b_c).square().sum(), "CKA")


def mutual_knn(a, b, topk: int = 10) -> float:
    """Mutual k-nearest-neighbour alignment: mean over samples of |knn_a(i) & knn_b(i)| / topk.

    Neighbours are taken by the linear kernel (inner product), excluding the sample itself.

    Args:
        a: (N, D1) features; b: (N, D2) features of the same N samples.
        topk: neighbourhood size k, 1 <= topk < N.
    Returns:
        A value in [0, 1]; about topk / (N - 1) for independent features, 1 for identical neighbourhoods.
    """
    a, b = _pair(a, b, min_samples=2)
    _check_topk(topk, a.shape[0])
    shared = knn_mask(a @ a.T, topk) & knn_mask(b @ b.T, topk)
    return float(shared.sum(dim=1).double().mean() / topk)


def cknna(a, b, topk: int = 10) -> float:
    """Centered kernel nearest-neighbour alignment (CKNNA) of Huh et al. (2024), as used by REPA (k = 10).

    With linear kernels K = a a', L = b b', the k-nearest-neighbour masks M_K, M_L (row i marks the k samples
    j != i of largest kernel value) and the mutual mask M = M_K * M_L:

        CKNNA = HSIC_u(M * K, M * L) / sqrt(HSIC_u(M_K * K, M_K * K) HSIC_u(M_L * L, M_L * L)),

    HSIC_u the unbiased estimator (``hsic_unbiased``). CKNNA(a, a) = 1; independent features give about 0.

    Args:
        a: (N, D1) features; b: (N, D2) features of the same N samples (torch or numpy; computed in float64).
        topk: neighbourhood size k, 1 <= topk < N. ``topk = N - 1`` reduces CKNNA to unbiased linear CKA.
    Returns:
        CKNNA as a float; invariant to orthogonal transforms and isotropic scaling of either side.
    Raises:
        ValueError: different N, N < 4, topk out of range, non-finite or degenerate features.
    """
    a, b = _pair(a, b, min_samples=4)
    _check_topk(topk, a.shape[0])
    k, l = a @ a.T, b @ b.T                                     # (N, N)
    mask_k, mask_l = knn_mask(k, topk), knn_mask(l, topk)
    mutual = mask_k & mask_l
    cross = hsic_unbiased(k * mutual, l * mutual)
    self_k = hsic_unbiased(k * mask_k, k * mask_k)
    self_l = hsic_unbiased(l * mask_l, l * mask_l)
    return _normalised(cross, self_k, self_l, "CKNNA")


def l2_normalize(x, eps: float = 1e-12) -> torch.Tensor:
    """Rows of ``x`` (N, D) scaled to unit L2 norm (float64), the preprocessing of the PRH alignment pipeline."""
    x = _as_float64(x, "x")
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


__all__ = ["cka", "cknna", "mutual_knn", "hsic_unbiased", "knn_mask", "l2_normalize"]
