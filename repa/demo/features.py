"""A cheap in-domain feature network for the default job's learning curves.

TF-Inception FID costs about 0.1 s an image on 2 CPU cores, too much for a dense learning curve of both arms. The
curve therefore uses the Frechet distance in the penultimate features of a small Fashion-MNIST classifier trained
inside the job (the "FID with a domain classifier" used for MNIST-like data), computed on the same samples from the
same noise for both arms. The end points are also measured with TF-Inception FID, the paper's protocol.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from repa.evaluation.fid import frechet_distance
from repa.utils import atomic_write


class FashionClassifier(nn.Module):
    """Two conv stages and a 128-d feature layer; about 90% test accuracy after one epoch."""

    feature_dim = 128

    def __init__(self, channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 7 * 7, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, 28, 28) -> float (B, 128)."""
        x = torch.as_tensor(images_uint8).float() / 127.5 - 1.0
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images_uint8))


def train_classifier(images: np.ndarray, labels: np.ndarray, *, epochs: int = 1, batch_size: int = 128,
                     seed: int = 0) -> FashionClassifier:
    """Train on uint8 images (N, C, 28, 28) with Adam (lr 1e-3); returns the network in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = FashionClassifier(images.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x_all, y_all = torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))
    for _ in range(epochs):
        for idx in torch.randperm(len(x_all), generator=gen).split(batch_size):
            loss = F.cross_entropy(net(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(net: FashionClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    pred = torch.cat([net(torch.from_numpy(images[i:i + 1000])).argmax(1) for i in range(0, len(images), 1000)])
    return float((pred.numpy() == labels).mean())


@torch.no_grad()
def feature_stats(net: FashionClassifier, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of the features of uint8 images (N, C, 28, 28)."""
    feats = torch.cat([net.features(torch.from_numpy(np.ascontiguousarray(images[i:i + 1000])))
                       for i in range(0, len(images), 1000)]).double().numpy()
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def fd_domain(net: FashionClassifier, images: np.ndarray, ref: tuple[np.ndarray, np.ndarray]) -> float:
    """Frechet distance between the classifier features of ``images`` and the reference statistics ``ref``."""
    mu, sigma = feature_stats(net, images)
    return float(frechet_distance(mu, sigma, ref[0], ref[1]))


def save_classifier(net: FashionClassifier, path: str | os.PathLike) -> None:
    from safetensors.torch import save
    data = save({k: v.contiguous() for k, v in net.state_dict().items()})
    atomic_write(path, lambda f: f.write(data))


def load_classifier(path: str | os.PathLike, channels: int = 1) -> FashionClassifier:
    from safetensors.torch import load_file
    net = FashionClassifier(channels)
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False)
