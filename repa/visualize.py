"""Turning model-space samples into images: uint8 conversion, grids, PNG files."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from repa.checkpoint import as_loaded
from repa.config import SampleConfig
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
def sample_images(model, num: int, config: SampleConfig | None = None, *, seed: int = 0,
                  labels: torch.Tensor | None = None, decode=None, vae=None, **overrides) -> torch.Tensor:
    """Draw ``num`` samples (labels cycling through the classes unless given) and return uint8 (B, C, H, W).

    ``model`` is a ``LoadedModel`` (``repa.load_model``) or a network with ``.config``; ``config`` the sampling
    settings (default ``SampleConfig()``), ``overrides`` any of ``repa.sample``'s keyword arguments. Latent models
    are decoded by ``decode`` (latents -> uint8 images) or else by the VAE ``vae`` (hub id or folder, default
    sd-vae-ft-ema; loaded once per process, ``repa.autoencoder.cached_vae``); pixel models need neither.
    """
    loaded = as_loaded(model)
    cfg = loaded.config
    device = next(loaded.model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(num, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen).to(device)
    if labels is None:
        labels = torch.arange(num) % cfg.num_classes
    generator = torch.Generator(device).manual_seed(seed)
    x = sample(loaded, noise, labels.to(device), config, generator=generator, **overrides)
    if cfg.space == "latent":
        if decode is None:
            decode = latent_decoder(vae, device)
        return decode(x)
    if vae is not None:
        raise ValueError(f"{cfg.name} is a pixel-space model: it needs no VAE, but vae={vae!r} was given")
    return to_uint8(x)


def latent_decoder(vae=None, device="cpu"):
    """latents -> uint8 images through a VAE: a loaded one, or a hub id / folder loaded once per process."""
    from repa.autoencoder import DECODE_VAE, cached_vae, decode
    model = vae if vae is not None and not isinstance(vae, (str, Path)) else cached_vae(vae or DECODE_VAE, device)
    return lambda z: decode(model, z)


def sample_grid_png(model, path, config: SampleConfig | None = None, *, num: int = 16, seed: int = 0,
                    decode=None, vae=None, **overrides) -> None:
    """Sample ``num`` images (as ``sample_images``) and write them as one PNG grid."""
    images = sample_images(model, num, config, seed=seed, decode=decode, vae=vae, **overrides)
    save_png(image_grid(images), path)
