"""Turning model-space samples into images: uint8 conversion, grids, PNG files."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from repa.utils import atomic_write


def image_grid(images: np.ndarray | torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (B, C, H, W) -> one (H', W', C) uint8 grid image with ``nrow`` images per row."""
    images = np.asarray(images.cpu() if isinstance(images, torch.Tensor) else images)
    b, c, h, w = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(b)))
    rows = int(math.ceil(b / nrow))
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = images[i].transpose(1, 2, 0)
    return grid


def to_pil(image: np.ndarray | torch.Tensor, channels_last: bool = False):
    """One uint8 image (C, H, W) as ``repa.generate_images`` gives it (or (H, W, C) with ``channels_last``), C = 1
    or 3, as a PIL image: mode "L" for one channel (PIL has no (H, W, 1) mode), "RGB" for three."""
    from PIL import Image
    array = np.asarray(image.cpu() if isinstance(image, torch.Tensor) else image)
    if array.ndim != 3 or array.dtype != np.uint8 or array.shape[-1 if channels_last else 0] not in (1, 3):
        raise ValueError(f"to_pil takes one uint8 image (C, H, W) with C 1 or 3, got {array.dtype} {array.shape}")
    array = array if channels_last else array.transpose(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(array[..., 0] if array.shape[-1] == 1 else array))


def save_png(grid: np.ndarray, path: str | Path) -> None:
    """Write an (H, W, C) uint8 array as PNG atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    to_pil(grid, channels_last=True).save(buffer, format="PNG")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
