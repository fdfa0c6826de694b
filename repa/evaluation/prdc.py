"""Improved precision and recall (Kynkaanniemi et al. 2019) as the ADM evaluator computes them.

ADM's ``ManifoldEstimator``: the manifold of a feature set is the union of balls around its points, each ball's
squared radius being the squared distance to the point's k-th nearest neighbour (k = 3, the point itself not
counted). Precision = fraction of samples inside the reference manifold; recall = fraction of reference points
inside the sample manifold. A point is inside when its squared distance to some centre is <= that centre's radius.

Distances are computed in row x column blocks on the features' device. ADM evaluates them in float16 and falls
back to float32 when that overflows; we always use float32 (or float64 when given), which removes fp16 rounding
near the ball boundaries and changes results by at most a few boundary cases.
"""
from __future__ import annotations

import numpy as np
import torch

NEIGHBOURHOOD = 3           # ADM's nhood_sizes=(3,)
BLOCK = 10_000              # ADM's row and column batch size


def _as_tensor(x, device=None, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device=device, dtype=dtype)


def pairwise_sq_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (U, V) between rows of u (U, D) and v (V, D), clamped at 0 as in ADM."""
    d = (u * u).sum(1, keepdim=True) - 2.0 * (u @ v.T) + (v * v).sum(1)[None, :]
    return d.clamp_min_(0.0)


@torch.no_grad()
def manifold_radii(features, k: int = NEIGHBOURHOOD, block: int = BLOCK, device=None,
                   dtype=torch.float32) -> torch.Tensor:
    """Squared distance from each point to its k-th nearest neighbour within the set, excluding itself.

    Args:
        features: (N, D) array or tensor, N > k.
        k: neighbourhood size (ADM: 3).
        block: rows and columns per distance block (memory: block**2 floats).
    Returns:
        (N,) radii on ``device`` in ``dtype``.
    """
    feats = _as_tensor(features, device, dtype)
    n = feats.shape[0]
    if n <= k:
        raise ValueError(f"manifold radii with k={k} need more than {k} points, got {n}")
    radii = torch.empty(n, device=feats.device, dtype=dtype)
    for r0 in range(0, n, block):
        rows = feats[r0:r0 + block]
        dist = torch.cat([pairwise_sq_distances(rows, feats[c0:c0 + block]) for c0 in range(0, n, block)], 1)
        # the (k+1)-th smallest distance: index 0 is the point itself (distance 0), as in ADM's partition at k
        radii[r0:r0 + block] = dist.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


@torch.no_grad()
def coverage_fraction(points, centres, radii: torch.Tensor, block: int = BLOCK, device=None,
                      dtype=torch.float32) -> float:
    """Fraction of ``points`` within ``radii`` (squared) of at least one of ``centres``."""
    pts, ctr = _as_tensor(points, device, dtype), _as_tensor(centres, device, dtype)
    radii = radii.to(device=ctr.device, dtype=dtype)
    inside = torch.zeros(pts.shape[0], dtype=torch.bool, device=pts.device)
    for r0 in range(0, pts.shape[0], block):
        for c0 in range(0, ctr.shape[0], block):
            d = pairwise_sq_distances(pts[r0:r0 + block], ctr[c0:c0 + block])       # (R, C)
            inside[r0:r0 + block] |= (d <= radii[c0:c0 + block][None, :]).any(dim=1)
    return float(inside.double().mean())


def precision_recall(reference_features, sample_features, k: int = NEIGHBOURHOOD, block: int = BLOCK,
                     device=None, dtype=torch.float32) -> tuple[float, float]:
    """ADM precision and recall of samples against references in a feature space (Inception pool, 2048-d).

    Args:
        reference_features: (M, D) features of the reference images.
        sample_features: (N, D) features of the generated images.
        k: neighbourhood size of the manifold radii (ADM: 3).
        block: distance block size; device/dtype: where and how distances are computed.
    Returns:
        (precision, recall) in [0, 1].
    """
    ref = _as_tensor(reference_features, device, dtype)
    smp = _as_tensor(sample_features, device, dtype)
    if ref.ndim != 2 or smp.ndim != 2 or ref.shape[1] != smp.shape[1]:
        raise ValueError(f"feature sets must be (M, D) and (N, D) with equal D, got {tuple(ref.shape)} and "
                         f"{tuple(smp.shape)}")
    ref_radii = manifold_radii(ref, k, block, dtype=dtype)
    smp_radii = manifold_radii(smp, k, block, dtype=dtype)
    precision = coverage_fraction(smp, ref, ref_radii, block, dtype=dtype)
    recall = coverage_fraction(ref, smp, smp_radii, block, dtype=dtype)
    return precision, recall
