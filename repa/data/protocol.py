"""The dataset interface that training, the loader, evaluation and analysis read; nothing else is asked of a dataset.

``repa.data.store.PreparedDataset`` (a folder written by ``repa prepare``), ``repa.data.memory.ArrayDataset`` (arrays
in memory) and the readers of the reference's own folders (``repa.data.layouts``) implement it. They subclass
``Dataset`` so that a missing member is an error where the class is written, not an ``AttributeError`` deep inside a
training run; a third-party dataset may subclass it too, or only provide the same members (the protocol is
runtime-checkable).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from repa.config import ConfigError


class DataError(ConfigError):
    """A dataset or source problem the user must fix; the message names the file and the fix."""


@runtime_checkable
class Dataset(Protocol):
    """Class-labelled images, with optional VAE latents and encoder-token caches, read by batches of indices.

    Attributes:
        resolution: image side length in pixels (images are square).
        channels: 1 (greyscale) or 3 (RGB).
        num_classes: number of classes; labels lie in 0..num_classes-1.
        class_names: class names, index = label.
        labels: int64 (N,), the label of every item.
        has_latents: ``get_batch`` can return ``"latent_mean"`` and ``"latent_std"`` (the VAE posterior moments).
        path: the folder ``repa prepare`` wrote (training checks it against its manifest), or the reference folder
            read as it is (``repa.data.layouts``); evaluation caches reference statistics by it. None for data with
            no folder, e.g. held in memory.
    """

    resolution: int
    channels: int
    num_classes: int
    class_names: list[str]
    labels: np.ndarray
    has_latents: bool
    path: str | None

    def __len__(self) -> int:
        """Number of items."""
        ...

    def get_batch(self, indices, keys=None) -> dict[str, np.ndarray]:
        """The items at ``indices`` (int array-like (B,), in that order, repeats allowed): a dict key -> array with
        leading dimension B (``"image"`` uint8 (B, C, H, W), ``"label"`` int64 (B,), ...); only ``keys`` when given."""
        ...

    def array_shape(self, key: str) -> tuple[int, ...] | None:
        """Shape of one item of the stored field ``key`` (``"image"``, ``"label"``, ``"latent_mean"``,
        ``"tokens:<name>"``, ...), without the leading item dimension; None when the dataset does not store it."""
        ...

    def token_cache_key(self, encoder_name: str, resolution: int, token_grid: int) -> str | None:
        """The ``get_batch`` key of cached tokens of this encoder setting, or None: the encoder must run live."""
        ...
