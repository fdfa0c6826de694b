"""The dataset interface that training, the loader, evaluation and analysis read; nothing else is asked of a dataset.

``repa.data.store.PreparedDataset`` (a folder written by ``repa prepare``), ``repa.data.memory.ArrayDataset`` (arrays
in memory) and the readers of the reference's own folders (``repa.data.layouts``) implement it. They subclass
``Dataset`` so that a missing member is an error where the class is written, not an ``AttributeError`` deep inside a
training run; a third-party dataset may subclass it too, or only provide the same members (the protocol is
runtime-checkable). A captioned dataset
(text-to-image) is also a ``TextDataset``.
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


@runtime_checkable
class TextDataset(Protocol):
    """A captioned dataset (text-to-image): a ``Dataset`` without classes (``num_classes`` 0, ``class_names`` [],
    ``labels`` int64 zeros (N,)) whose items have one or more captions, stored as text-encoder tokens.

    The text condition (``repa.conditions.TextContext``) draws one caption per item per step and reads its tokens
    with ``get_contexts``; latents and images come from ``get_batch`` (``"latent_mean"``, ``"latent_std"``,
    ``"image"``) as for any dataset. Implemented by ``PreparedDataset`` (``repa prepare`` of MS-COCO captions),
    ``repa.data.memory.TextArrayDataset`` and the readers of existing layouts (``repa.data.layouts``).

    Attributes:
        caption_counts: int64 (N,), how many captions (text contexts) item i has (>= 1).
        empty_context: float32 (L, D), the empty caption's tokens: the null value of caption dropout and guidance.
    """

    caption_counts: np.ndarray
    empty_context: np.ndarray

    def get_contexts(self, indices, caption_indices) -> np.ndarray:
        """float32 (B, L, D): the tokens of caption ``caption_indices[b]`` (0 .. caption_counts[i] - 1) of item
        ``indices[b]``."""
        ...

    def captions(self, index: int) -> list[str] | None:
        """The caption strings of item ``index`` when stored (None when the layout holds only tokens)."""
        ...


def check_text_dataset(dataset, context_dim: int | None = None) -> None:
    """DataError unless ``dataset`` is a captioned dataset whose tokens are ``context_dim`` wide (when given)."""
    where = getattr(dataset, "path", None) or "the dataset"
    if not isinstance(dataset, TextDataset):
        raise DataError(f"{where} has no captions (caption_counts, get_contexts, empty_context): a text-to-image "
                        "model trains on a captioned dataset; prepare one with `repa prepare COCO OUT --captions "
                        "annotations/captions_train2014.json`")
    counts, empty = np.asarray(dataset.caption_counts), np.asarray(dataset.empty_context)
    if counts.shape != (len(dataset),) or (len(counts) and counts.min() < 1):
        raise DataError(f"{where}: caption_counts must give >= 1 caption for each of its {len(dataset)} items")
    if empty.ndim != 2 or (context_dim is not None and empty.shape[1] != context_dim):
        raise DataError(f"{where}: its text tokens are {tuple(empty.shape)} (L, D) but the model reads "
                        f"{context_dim}-wide tokens: set --model.context-dim {empty.shape[-1]}")
