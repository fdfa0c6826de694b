"""In-memory datasets: the ``repa.data.Dataset`` interface of a prepared dataset directory, over numpy arrays."""
from __future__ import annotations

import numpy as np

from repa.data.protocol import DataError, Dataset


class ArrayDataset(Dataset):
    """Images uint8 (N, C, H, W) and labels (N,) held in memory, plus optional extra per-item arrays.

    ``get_batch(indices)`` returns ``{"image", "label", **extra}`` as numpy arrays, like ``open_dataset``. Extra
    arrays named ``"latent_mean"``/``"latent_std"`` are VAE latents; ``"tokens:<encoder>@<resolution>/<grid>"``
    a token cache (see ``token_cache_key``). ``path`` is None: there is no folder.
    """

    def __init__(self, images, labels, *, num_classes: int | None = None, class_names=None, **extra):
        images = np.asarray(images)
        labels = np.asarray(labels, dtype=np.int64)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        for key, value in extra.items():
            if len(value) != len(images):
                raise DataError(f"extra array {key!r} has {len(value)} items, expected {len(images)}")
        self.images, self.labels, self.extra = images, labels, {k: np.asarray(v) for k, v in extra.items()}
        self.num_classes = int(num_classes if num_classes is not None else labels.max() + 1)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        self.channels, self.resolution = images.shape[1], images.shape[2]
        self.has_latents = "latent_mean" in self.extra
        self.path = None
        self.manifest = {"source": "memory", "count": len(images), "resolution": self.resolution,
                         "channels": self.channels, "num_classes": self.num_classes}

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices: np.ndarray, keys=None) -> dict[str, np.ndarray]:
        """The items at ``indices`` (in that order); only the fields in ``keys`` when given."""
        fields = {"image": self.images, "label": self.labels, **self.extra}
        return {k: v[indices] for k, v in fields.items() if keys is None or k in keys}

    def array_shape(self, key: str) -> tuple[int, ...] | None:
        """Shape of one item of ``key`` ("image", "label" or an extra array); None when it is not held."""
        fields = {"image": self.images, "label": self.labels, **self.extra}
        return tuple(fields[key].shape[1:]) if key in fields else None

    def token_cache_key(self, encoder_name: str, resolution: int, token_grid: int) -> str | None:
        """Batch key of the extra array ``"tokens:<encoder_name>@<resolution>/<token_grid>"``, or None."""
        key = f"tokens:{encoder_name}@{resolution}/{token_grid}"
        return key if key in self.extra else None


class TextArrayDataset(ArrayDataset):
    """Captioned images in memory (a ``repa.data.protocol.TextDataset``): images uint8 (N, C, H, W), every
    caption's text tokens ``contexts`` float (M, L, D) item after item, ``caption_counts`` (N,) (sum M), the empty
    caption's tokens ``empty_context`` (L, D), optional caption strings (one list per item), extra arrays (latents)."""

    def __init__(self, images, contexts, caption_counts, empty_context, *, captions=None, **extra):
        images = np.asarray(images)
        super().__init__(images, np.zeros(len(images), np.int64), num_classes=0, **extra)
        self.caption_counts = np.asarray(caption_counts, dtype=np.int64)
        self.contexts = np.asarray(contexts, dtype=np.float32)
        self.empty_context = np.asarray(empty_context, dtype=np.float32)
        if self.caption_counts.shape != (len(images),) or (len(images) and self.caption_counts.min() < 1):
            raise DataError(f"caption_counts must give >= 1 caption for each of the {len(images)} images")
        if len(self.contexts) != self.caption_counts.sum() or self.contexts.shape[1:] != self.empty_context.shape:
            raise DataError(f"{len(self.contexts)} contexts {self.contexts.shape[1:]} for {self.caption_counts.sum()} "
                            f"captions with an empty context of {self.empty_context.shape}")
        self._first = np.concatenate([[0], np.cumsum(self.caption_counts)[:-1]]).astype(np.int64)
        self._captions = captions

    def get_contexts(self, indices, caption_indices) -> np.ndarray:
        """float32 (B, L, D): caption ``caption_indices[b]`` of item ``indices[b]``."""
        idx, k = np.asarray(indices, np.int64), np.asarray(caption_indices, np.int64)
        if np.any(k < 0) or np.any(k >= self.caption_counts[idx]):
            raise IndexError("a caption index is outside 0..caption_counts - 1 of its item")
        return self.contexts[self._first[idx] + k]

    def captions(self, index: int) -> list[str] | None:
        return None if self._captions is None else list(self._captions[index])
