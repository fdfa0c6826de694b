"""IDX files (the MNIST / Fashion-MNIST container), parsed by hand.

Format: a 4-byte magic ``0x00 0x00 <type code> <ndim>``, then one big-endian uint32 per dimension, then the raw
values in C order, big-endian. Files ending in ``.gz`` are decompressed transparently.
"""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from repa.data.protocol import DataError

# IDX type code -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# split -> (images file, labels file) as named by the original distribution and the Debian package.
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of one IDX file into an array in native byte order.

    Args:
        data: the (decompressed) file contents.
        name: file name used in error messages.
    Returns:
        ndarray with the shape from the header (uint8 stays uint8).
    Raises:
        ValueError: bad magic, unknown type code, or a size that does not match the header (truncated file).
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name}: not an IDX file (the first two bytes must be zero)")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{name}: unknown IDX type code 0x{code:02x}; known: "
                         f"{', '.join(f'0x{c:02x}' for c in IDX_DTYPES)}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header_len != expected:
        raise DataError(f"{name}: IDX header promises shape {shape} ({expected} bytes of data) but the file holds "
                         f"{len(data) - header_len} bytes; the file is truncated or corrupt")
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) from disk; see ``parse_idx``."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot decompress ({exc}); the file is truncated or corrupt") from None
    return parse_idx(data, name=path)


def fashion_mnist_paths(root: str | os.PathLike = FASHION_MNIST_DIR, split: str = "train") -> tuple[str, str]:
    """Paths of the (images, labels) IDX files of one Fashion-MNIST split ("train" or "test").

    Raises:
        FileNotFoundError: with the Debian package to install when the files are missing.
    """
    if split not in FASHION_MNIST_FILES:
        raise DataError(f"Fashion-MNIST split must be one of {sorted(FASHION_MNIST_FILES)}, got {split!r}")
    paths = tuple(os.path.join(os.fspath(root), f) for f in FASHION_MNIST_FILES[split])
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST IDX file(s) not found: {', '.join(missing)}. Install them with "
                                f"`apt-get install dataset-fashion-mnist` (files go to {FASHION_MNIST_DIR}) or "
                                f"pass the folder that holds {FASHION_MNIST_FILES[split]}")
    return paths  # type: ignore[return-value]


def load_fashion_mnist(root: str | os.PathLike = FASHION_MNIST_DIR, split: str = "train"
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Load one Fashion-MNIST split.

    Returns:
        images uint8 (N, 28, 28) and labels int64 (N,); N = 60000 (train) or 10000 (test).
    """
    image_path, label_path = fashion_mnist_paths(root, split)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split}: images {images.shape} and labels {labels.shape} do not match")
    return _as_uint8(images, image_path), labels.astype(np.int64)


def _as_uint8(images: np.ndarray, path) -> np.ndarray:
    """IDX images as uint8: uint8 kept; floats in [0, 1] scaled by 255 (in [0, 255] kept); integers in [0, 255]
    kept, in [0, 65535] scaled from 16 bits; anything else (NaN, negative, larger) refused by name."""
    if images.dtype == np.uint8:
        return images
    if images.size == 0:
        return images.astype(np.uint8)
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        raise DataError(f"{path}: float images with NaN or inf values")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > (255 if np.issubdtype(images.dtype, np.floating) else 65535):
        raise DataError(f"{path}: {images.dtype} images with values {low:g}..{high:g}; expected [0, 1], [0, 255] "
                        "or 16-bit integers")
    scale = (255.0 if high <= 1 else 1.0) if np.issubdtype(images.dtype, np.floating) else \
        (1.0 if high <= 255 else 255.0 / 65535.0)
    return np.clip(np.rint(images.astype(np.float64) * scale), 0, 255).astype(np.uint8)
