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


def save_png(grid: np.ndarray, path: str | Path) -> None:
    """Write an (H, W, C) uint8 array as PNG atomically (temporary file + rename)."""
    from PIL import Image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = grid[..., 0] if grid.shape[-1] == 1 else grid
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
