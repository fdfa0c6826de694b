"""Linear probes of pooled features: how linearly decodable the class is from one layer.

A grid of learning rates is trained at once as one batched linear layer: weights (L, D, C), one slice per learning
rate, optimised by a hand-written AdamW (or SGD with momentum) whose step size is a per-slice tensor. The slices never
interact (the summed loss gives each slice its own gradient), so one run equals L separate runs at the cost of one
batched matmul. Features are standardised with the training split's statistics. Everything is seeded: the split, the
minibatch order; weights start at zero.

The accuracy reported is the best over the grid on the held-out split (the usual protocol of layer-wise probe
curves); with a small held-out split that choice is slightly optimistic, so every per-lr number is kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_LRS = {"adamw": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2), "sgd": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)}


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of a learning-rate grid of linear probes.

    Attributes:
        lrs: the learning rates, one probe each.
        test_accuracy / train_accuracy: per-lr top-1 accuracy on the held-out / training split.
        best_lr, best_accuracy: the lr with the highest held-out accuracy and that accuracy.
        num_train, num_test, num_classes: sizes of the problem.
    """
    lrs: tuple[float, ...]
    test_accuracy: tuple[float, ...]
    train_accuracy: tuple[float, ...]
    best_lr: float
    best_accuracy: float
    num_train: int
    num_test: int
    num_classes: int

    def to_dict(self) -> dict:
        return {"best_lr": self.best_lr, "best_accuracy": self.best_accuracy, "lrs": list(self.lrs),
                "test_accuracy": list(self.test_accuracy), "train_accuracy": list(self.train_accuracy),
                "num_train": self.num_train, "num_test": self.num_test, "num_classes": self.num_classes}


# ---- helpers -----------------------------------------------------------------------------------------------------

def _as_tensor(x, dtype) -> torch.Tensor:
    return (torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x.detach()).to("cpu", dtype)


def _accuracy(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Per-slice top-1 accuracy of the batched linear layer on (x, y)."""
    logits = torch.einsum("nd,ldc->lnc", x, weight) + bias[:, None, :]      # (L, N, C)
    return (logits.argmax(dim=-1) == y[None]).double().mean(dim=1).tolist()


class _BatchedOptimizer:
    """AdamW (decoupled weight decay) or SGD with momentum where the lr is a tensor broadcast per slice."""

    def __init__(self, params, lrs: torch.Tensor, kind: str, weight_decay: float,
                 betas=(0.9, 0.999), eps: float = 1e-8, momentum: float = 0.9):
        self.params, self.kind, self.weight_decay = params, kind, weight_decay
        self.lrs = [lrs.reshape(-1, *([1] * (p.ndim - 1))) for p in params]   # (L, 1, ...) per parameter
        self.betas, self.eps, self.momentum, self.steps = betas, eps, momentum, 0
        self.first = [torch.zeros_like(p) for p in params]
        self.second = [torch.zeros_like(p) for p in params] if kind == "adamw" else []

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        for i, (p, lr) in enumerate(zip(self.params, self.lrs)):
            g = p.grad
            if self.kind == "adamw":
                b1, b2 = self.betas
                p.mul_(1 - lr * self.weight_decay)
                self.first[i].mul_(b1).add_(g, alpha=1 - b1)
                self.second[i].mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat = self.first[i] / (1 - b1 ** self.steps)
                v_hat = self.second[i] / (1 - b2 ** self.steps)
                p.sub_(lr * m_hat / (v_hat.sqrt() + self.eps))
            else:
                g = g + self.weight_decay * p
                self.first[i].mul_(self.momentum).add_(g)
                p.sub_(lr * self.first[i])
            p.grad = None


# ---- probes ------------------------------------------------------------------------------------------------------

def fit_linear_probes(x_train, y_train, x_test, y_test, *, num_classes: int | None = None,
                      lrs: tuple[float, ...] | None = None, epochs: int = 100, batch_size: int | None = 256,
                      optimizer: str = "adamw", weight_decay: float = 0.0, seed: int = 0,
                      device: torch.device | str | None = None) -> ProbeResult:
    """Train one linear classifier per learning rate, all together, and evaluate them on held-out data.

    Args:
        x_train: (N_train, D) features; y_train: (N_train,) int labels; x_test, y_test: the held-out split.
        num_classes: C; defaults to 1 + the largest label seen.
        lrs: learning-rate grid (default: 6 values per optimizer, ``DEFAULT_LRS``).
        epochs: passes over the training split.
        batch_size: minibatch size; None trains full-batch.
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum 0.9).
        weight_decay: decoupled for AdamW, L2 for SGD.
        seed: seeds the minibatch order.
        device: where to train (default CPU); results match across devices up to float rounding.
    Returns:
        ProbeResult with per-lr accuracies and the best held-out accuracy.
    """
    if optimizer not in DEFAULT_LRS:
        raise ValueError(f"optimizer must be one of {sorted(DEFAULT_LRS)}, got {optimizer!r}")
    lrs = tuple(float(lr) for lr in (lrs if lrs is not None else DEFAULT_LRS[optimizer]))
    if not lrs or min(lrs) <= 0:
        raise ValueError(f"lrs must be a non-empty list of positive learning rates, got {lrs}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    x_train, x_test = _as_tensor(x_train, torch.float64), _as_tensor(x_test, torch.float64)
    y_train, y_test = _as_tensor(y_train, torch.long), _as_tensor(y_test, torch.long)
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(x_train.shape)} and "
                         f"{tuple(x_test.shape)}")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(f"features and labels differ in N: train {len(x_train)} vs {len(y_train)}, "
                         f"test {len(x_test)} vs {len(y_test)}")
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError("both the training and the held-out split need at least one sample")
    labels_max = int(max(y_train.max(), y_test.max()))
    num_classes = num_classes if num_classes is not None else labels_max + 1
    if min(int(y_train.min()), int(y_test.min())) < 0 or labels_max >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {int(y_train.min())}..{labels_max}")

    mean, std = x_train.mean(dim=0), x_train.std(dim=0).clamp_min(1e-6)    # training-split statistics only
    device = torch.device(device) if device is not None else torch.device("cpu")
    x_train = ((x_train - mean) / std).float().to(device)
    x_test = ((x_test - mean) / std).float().to(device)
    y_train, y_test = y_train.to(device), y_test.to(device)
    n, d = x_train.shape
    weight = torch.zeros(len(lrs), d, num_classes, device=device, requires_grad=True)   # (L, D, C)
    bias = torch.zeros(len(lrs), num_classes, device=device, requires_grad=True)        # (L, C)
    opt = _BatchedOptimizer([weight, bias], torch.tensor(lrs, device=device), optimizer, weight_decay)
    generator = torch.Generator().manual_seed(seed)
    step_size = n if batch_size is None else max(1, min(int(batch_size), n))
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator) if step_size < n else torch.arange(n)
        for start in range(0, n, step_size):
            idx = order[start:start + step_size].to(device)
            logits = torch.einsum("nd,ldc->lnc", x_train[idx], weight) + bias[:, None, :]   # (L, B, C)
            # Sum over slices of each slice's mean loss: every slice gets exactly its own gradient.
            loss = F.cross_entropy(logits.reshape(-1, num_classes), y_train[idx].repeat(len(lrs)),
                                   reduction="sum") / len(idx)
            loss.backward()
            opt.step()
    with torch.no_grad():
        train_acc, test_acc = _accuracy(weight, bias, x_train, y_train), _accuracy(weight, bias, x_test, y_test)
    best = int(np.argmax(test_acc))
    return ProbeResult(lrs=lrs, test_accuracy=tuple(test_acc), train_accuracy=tuple(train_acc), best_lr=lrs[best],
                       best_accuracy=test_acc[best], num_train=n, num_test=len(x_test), num_classes=num_classes)


def split_indices(num_samples: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random (train, test) partition of range(num_samples), each part sorted."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    num_test = int(round(num_samples * test_fraction))
    if num_test < 1 or num_test >= num_samples:
        raise ValueError(f"cannot split {num_samples} samples with test_fraction={test_fraction}: each split "
                         "needs at least one sample")
    order = np.random.default_rng(seed).permutation(num_samples)
    return np.sort(order[num_test:]), np.sort(order[:num_test])


def linear_probe(features, labels, *, test_fraction: float = 0.2, seed: int = 0, **kwargs) -> ProbeResult:
    """Split (features, labels) into train and held-out parts (seeded) and run ``fit_linear_probes``.

    Args:
        features: (N, D) pooled features; labels: (N,) int class labels.
        test_fraction: share of samples held out for evaluation.
        seed: seeds the split and the minibatch order.
        **kwargs: forwarded to ``fit_linear_probes`` (lrs, epochs, batch_size, optimizer, weight_decay, ...).
    Returns:
        ProbeResult.
    """
    x, y = _as_tensor(features, torch.float64), _as_tensor(labels, torch.long)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"expected features (N, D) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    train, test = split_indices(len(x), test_fraction, seed)
    return fit_linear_probes(x[train], y[train], x[test], y[test], seed=seed, **kwargs)


__all__ = ["ProbeResult", "fit_linear_probes", "linear_probe", "split_indices", "DEFAULT_LRS"]
