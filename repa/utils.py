"""Small utilities shared across the package: atomic writes, file digests, library versions, image scaling."""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import BinaryIO, Callable

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *,
                 tmp: str | os.PathLike | None = None) -> None:
    """Write ``path`` through ``write(file)`` on a temporary file, fsync it, then rename it into place.

    A reader never sees a partial file; an interrupted write leaves only the temporary file (default
    ``.NAME.tmp-PID`` next to ``path``), which nothing reads and which is removed on error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tmp) if tmp is not None else path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (``atomic_write``)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """sha256 hex digest of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions(*names: str) -> dict[str, str]:
    """{"python": ..., name: installed version or "unknown"} for the distributions ``names``."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> float32 pixel-space model inputs in [-1, 1] (x / 127.5 - 1)."""
    return images.float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Pixel-space samples in [-1, 1] (B, C, H, W) -> uint8 via clamp(127.5 (x + 1), 0, 255), truncated."""
    return torch.clamp(127.5 * (x.float() + 1), 0, 255).to(torch.uint8)


__all__ = ["atomic_write", "atomic_write_text", "from_uint8", "library_versions", "sha256_file", "to_uint8"]


def autocast_context(precision: str, device: torch.device):
    """Autocast for bf16/fp16 on the given device; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_all_cpus() -> int:
    """Give torch's CPU kernels every CPU of this process (``os.cpu_count()`` over torchrun's ``LOCAL_WORLD_SIZE``)
    unless the user pinned a count with ``OMP_NUM_THREADS``; the default job and ``repa prepare``'s encoders both run
    so. Returns the thread count in use."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    return torch.get_num_threads()
