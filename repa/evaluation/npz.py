"""The ADM sample format: a ``.npz`` whose ``arr_0`` is (N, H, W, 3) uint8, read and checked without loading it.

``open_samples`` reads only the ``.npy`` header of ``arr_0`` inside the zip, so a wrong key, dtype, shape or value
range is reported before any heavy work; ``iter_batches`` then streams (B, 3, H, W) uint8 batches. ADM reference
batches (``VIRTUAL_imagenet256_labeled.npz``) hold ``arr_0`` plus the precomputed Inception statistics ``mu``,
``sigma`` (pool, 2048-d) and ``mu_s``, ``sigma_s`` (spatial, 2023-d); ``open_reference`` reads and checks those.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from repa.evaluation.inception import POOL_DIM, SPATIAL_DIM
from repa.config import ConfigError

IMAGE_KEY = "arr_0"
STAT_SHAPES = {"mu": (POOL_DIM,), "sigma": (POOL_DIM, POOL_DIM), "mu_s": (SPATIAL_DIM,),
               "sigma_s": (SPATIAL_DIM, SPATIAL_DIM)}
FORMAT_HINT = ("the ADM format is np.savez(path, arr_0=images) with images (N, H, W, 3) uint8 in [0, 255]; "
               "convert model outputs x in [-1, 1] with clamp(127.5 * x + 128, 0, 255).astype(uint8)")


class NpzFormatError(ConfigError):
    """A sample or reference ``.npz`` does not follow the ADM format; the message names the file and the fix."""


def _header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the ``.npy`` stream ``f``, leaving ``f`` at the first data byte."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _read_header(zf: zipfile.ZipFile, member: str):
    with zf.open(member) as f:
        return _header(f)


@dataclass
class SampleFile:
    """A validated ADM ``.npz``: ``arr_0`` of shape (N, H, W, 3) uint8, plus the names of its other arrays."""
    path: Path
    num: int
    height: int
    width: int
    keys: list[str] = field(default_factory=list)

    @property
    def resolution(self) -> int:
        return self.height

    def __len__(self) -> int:
        return self.num

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Stream ``arr_0`` as uint8 (B, 3, H, W) batches, in order, reading B images at a time."""
        with zipfile.ZipFile(self.path) as zf, zf.open(IMAGE_KEY + ".npy") as f:
            _header(f)
            image_bytes = self.height * self.width * 3
            for start in range(0, self.num, batch_size):
                count = min(batch_size, self.num - start)
                buf = f.read(count * image_bytes)
                if len(buf) != count * image_bytes:
                    raise NpzFormatError(f"{self.path}: arr_0 is truncated (ended before image {start + count})")
                batch = np.frombuffer(buf, np.uint8).reshape(count, self.height, self.width, 3)
                yield np.ascontiguousarray(batch.transpose(0, 3, 1, 2))

    def read(self, name: str) -> np.ndarray:
        """Load one (small) array of the file, e.g. ``labels``."""
        with np.load(self.path, allow_pickle=False) as data:
            return data[name]


def open_samples(path: str | os.PathLike) -> SampleFile:
    """Open and validate an ADM sample ``.npz`` from its header only (no image data is read).

    Raises:
        FileNotFoundError: the file does not exist.
        NpzFormatError: not a zip/npz, no ``arr_0``, dtype not uint8, shape not (N, H, W, 3), N == 0, or Fortran
            order; float images get a hint on how to convert them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample file {path} does not exist")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise NpzFormatError(f"{path} is not a .npz file (not a zip archive); {FORMAT_HINT}") from None
    with zf:
        keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        if IMAGE_KEY not in keys:
            raise NpzFormatError(f"{path}: no array 'arr_0' (found {keys}); {FORMAT_HINT}")
        shape, fortran, dtype = _read_header(zf, IMAGE_KEY + ".npy")
    if dtype != np.uint8:
        hint = ""
        if dtype.kind == "f":
            hint = " (float images: values in [-1, 1] or [0, 1] must be converted to uint8 first)"
        elif dtype.kind in "iu":
            hint = " (integer images: check they lie in [0, 255] and cast with .astype(np.uint8))"
        raise NpzFormatError(f"{path}: arr_0 has dtype {dtype}, expected uint8{hint}; {FORMAT_HINT}")
    if len(shape) != 4 or shape[3] != 3:
        extra = ""
        if len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3):
            extra = " (looks channels-first: transpose to (N, H, W, 3))"
        elif len(shape) == 4 and shape[3] == 1 or len(shape) == 3:
            extra = " (greyscale: replicate to 3 channels)"
        raise NpzFormatError(f"{path}: arr_0 has shape {shape}, expected (N, H, W, 3){extra}; {FORMAT_HINT}")
    if shape[0] == 0:
        raise NpzFormatError(f"{path}: arr_0 holds no images")
    if fortran:
        raise NpzFormatError(f"{path}: arr_0 is stored in Fortran order; save it with np.ascontiguousarray")
    return SampleFile(path, int(shape[0]), int(shape[1]), int(shape[2]), keys)


def check_value_range(images: np.ndarray, source: str) -> None:
    """Raise NpzFormatError when an in-memory image array is not uint8 in [0, 255] (floats, negatives, > 255)."""
    if images.dtype == np.uint8:
        return
    lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    raise NpzFormatError(f"{source}: images have dtype {images.dtype} with values in [{lo}, {hi}], expected uint8 "
                         f"in [0, 255]; {FORMAT_HINT}")


@dataclass
class ReferenceFile:
    """An ADM reference batch: its images (a ``SampleFile``) and the precomputed statistics it carries, if any."""
    images: SampleFile
    stats: dict[str, np.ndarray]

    @property
    def has_fid_stats(self) -> bool:
        return "mu" in self.stats and "sigma" in self.stats

    @property
    def has_sfid_stats(self) -> bool:
        return "mu_s" in self.stats and "sigma_s" in self.stats


def open_reference(path: str | os.PathLike) -> ReferenceFile:
    """Open an ADM reference batch (``arr_0`` images, optional ``mu``/``sigma``/``mu_s``/``sigma_s``).

    The statistics are loaded (small) and their shapes checked; the images are only validated from the header.
    """
    images = open_samples(path)
    stats: dict[str, np.ndarray] = {}
    present = [k for k in STAT_SHAPES if k in images.keys]
    if present:
        with np.load(images.path, allow_pickle=False) as data:
            for key in present:
                value = data[key]
                if value.shape != STAT_SHAPES[key]:
                    raise NpzFormatError(f"{images.path}: '{key}' has shape {value.shape}, expected "
                                         f"{STAT_SHAPES[key]} (statistics of the TF Inception 2015-12-05)")
                stats[key] = value.astype(np.float64)
    for a, b in (("mu", "sigma"), ("mu_s", "sigma_s")):
        if (a in stats) != (b in stats):
            raise NpzFormatError(f"{images.path}: has '{a if a in stats else b}' without "
                                 f"'{b if a in stats else a}'")
    return ReferenceFile(images, stats)


def check_resolution(samples_hw: tuple[int, int], reference_hw: tuple[int, int], sample_name: str,
                     reference_name: str) -> None:
    """Raise NpzFormatError when samples and reference images differ in size (FID would not be comparable)."""
    if tuple(samples_hw) != tuple(reference_hw):
        raise NpzFormatError(f"resolution mismatch: {sample_name} holds {samples_hw[0]}x{samples_hw[1]} images but "
                             f"the reference {reference_name} is {reference_hw[0]}x{reference_hw[1]}; evaluate "
                             f"against a reference of the same resolution")
