"""Turning model-space samples into images: uint8 conversion, grids, PNG files."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from repa.checkpoint import as_loaded
from repa.samplers import sample
from repa.utils import atomic_write, to_uint8


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


@torch.no_grad()
def sample_images(model, num: int, *, steps: int = 50, cfg_scale: float = 1.0, seed: int = 0,
                  sampler: str | None = None, labels: torch.Tensor | None = None, decode=None) -> torch.Tensor:
    """Draw ``num`` samples (labels cycling through the classes unless given) and return uint8 (B, C, H, W).

    ``model`` is a ``LoadedModel`` (``repa.load_model``) or a network with ``.config``.

    ``decode`` maps model-space latents to uint8 images (the VAE); pixel models need none.
    """
    loaded = as_loaded(model)
    cfg = loaded.config
    if sampler is None:
        sampler = "ddpm" if cfg.prediction == "epsilon" else "euler"
    device = next(loaded.model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(num, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen).to(device)
    if labels is None:
        labels = torch.arange(num) % cfg.num_classes
    x = sample(loaded, noise, labels.to(device), sampler=sampler, steps=steps, cfg_scale=cfg_scale)
    if cfg.space == "latent":
        if decode is None:
            raise ValueError("latent-space samples need a VAE decoder to become images")
        return decode(x)
    return to_uint8(x)


def sample_grid_png(model, path, *, num: int = 16, steps: int = 50, cfg_scale: float = 1.0, seed: int = 0,
                    decode=None) -> None:
    """Sample ``num`` images and write them as one PNG grid."""
    images = sample_images(model, num, steps=steps, cfg_scale=cfg_scale, seed=seed, decode=decode)
    save_png(image_grid(images), path)
