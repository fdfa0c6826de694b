"""Checks that run before anything is built or written: devices, output paths, a dataset against the model.

Every function raises an error whose message names the argument or file and says how to fix it (``ValueError``
and its subclasses, ``FileNotFoundError``, ``OSError`` with a readable reason); the command line prints it as one
line.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from repa.config import ConfigError


def check_device(device: str | None, flag: str = "--device") -> None:
    """Refuse a device string torch does not parse, or a CUDA/MPS device this machine does not have."""
    if device is None:
        return
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag} {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {device}: CUDA is not available on this machine (torch {torch.__version__}"
                             f"{' has no CUDA support' if torch.version.cuda is None else ' finds no GPU'}); "
                             f"use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{flag} {device}: MPS is not available on this machine; use --device cpu")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _probe_writable(folder: Path, target: Path, flag: str) -> None:
    """Create and delete a small file in ``folder``: read-only, unwritable and full file systems fail here."""
    probe = folder / f".repa-write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OSError(exc.errno, f"{flag} {target}: cannot write into {folder} ({os.strerror(exc.errno or 0)}); "
                                 f"choose a writable folder with free space") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """``path`` will be written as a file: it must not be a folder, and its folder must be writable."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{flag} {target} is a folder; give a file path such as "
                                              f"{target / 'out.png'}", str(target))
    parent = _nearest_existing(target.parent)
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{flag} {target}: {parent} is a file, not a folder",
                                 str(parent))
    _probe_writable(parent, target, flag)


def check_output_dir(path: str | os.PathLike, flag: str) -> None:
    """``path`` will be (or is) a folder this process writes into: not a file, writable. Creates nothing."""
    target = Path(path)
    existing = _nearest_existing(target)
    if not existing.is_dir():
        where = f"{flag} {target}" + ("" if existing == target.absolute() else f": {existing}")
        raise NotADirectoryError(errno.ENOTDIR, f"{where} is a file, not a folder; give a folder path",
                                 str(existing))
    _probe_writable(existing, target, flag)


# ---- a dataset against the model that will train on it ------------------------------------------------------------

def _item_shape(dataset, key: str):
    manifest = getattr(dataset, "manifest", None) or {}
    spec = manifest.get("arrays", {}).get(key)
    if spec is not None:
        return tuple(spec["item_shape"])
    extra = getattr(dataset, "extra", {})
    return tuple(extra[key].shape[1:]) if key in extra else None


def check_dataset_for_model(cfg, dataset) -> None:
    """Refuse a dataset whose images (or latents), resolution or labels do not fit ``cfg`` (a TrainConfig).

    For a prepared dataset the shard files are also checked against the manifest (sizes, shapes, dtypes; the full
    hashes stay with ``repa prepare --verify``).
    """
    m, where = cfg.model, getattr(dataset, "path", "the dataset")
    if m.space == "pixel":
        have = (dataset.channels, dataset.resolution)
        if have != (m.in_channels, m.input_size):
            raise ConfigError(f"{where} holds {dataset.channels}x{dataset.resolution}x{dataset.resolution} images, "
                              f"the pixel-space model expects {m.in_channels}x{m.input_size}x{m.input_size}: set "
                              f"--model.in-channels {dataset.channels} --model.input-size {dataset.resolution} "
                              f"--data.resolution {dataset.resolution}, or prepare the data at that size")
    else:
        shape = _item_shape(dataset, "latent_mean")
        if shape is None:
            raise ConfigError(f"model.space is 'latent' but {where} has no VAE latents; prepare it with "
                              f"`repa prepare SOURCE OUT --latents`, or train in pixel space (--model.space pixel)")
        if tuple(shape) != (m.in_channels, m.input_size, m.input_size):
            raise ConfigError(f"{where} holds latents of shape {tuple(shape)}, the model expects "
                              f"{(m.in_channels, m.input_size, m.input_size)}: set --model.in-channels {shape[0]} "
                              f"--model.input-size {shape[1]}")
    if cfg.data.resolution != dataset.resolution:
        raise ConfigError(f"data.resolution is {cfg.data.resolution} but {where} holds {dataset.resolution}px "
                          f"images: set --data.resolution {dataset.resolution}")
    if getattr(dataset, "path", None) and hasattr(dataset, "manifest") and "arrays" in dataset.manifest:
        from repa.data.verify import verify_dataset
        problems = verify_dataset(dataset.path, check_hashes=False)
        if problems:
            raise ConfigError(f"{where} does not match its manifest: {'; '.join(problems[:3])}"
                              f"{f' (and {len(problems) - 3} more)' if len(problems) > 3 else ''}; run "
                              f"`repa prepare --verify {where}` and prepare it again")
    if m.num_classes == 0:                         # an unconditional model reads no labels
        return
    labels = getattr(dataset, "labels", None)
    if labels is not None and len(labels):
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= m.num_classes:
            raise ConfigError(f"{where} has labels {low}..{high}, outside the model's classes 0..{m.num_classes - 1}:"
                              f" set --model.num-classes {max(high + 1, dataset.num_classes)}")
    if dataset.num_classes > m.num_classes:
        raise ConfigError(f"model.num_classes={m.num_classes} but {where} has {dataset.num_classes} classes: set "
                          f"--model.num-classes {dataset.num_classes}")


def check_logging_packages(cfg) -> None:
    """``wandb`` true needs the wandb package: say so before anything starts (not a traceback at the first log)."""
    import importlib.util

    from repa.config import ConfigError
    if cfg.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("wandb: Weights & Biases logging is on but the wandb package is not installed; "
                          "`pip install wandb` (or `pip install 'repa[wandb]'`), or leave --wandb out")


def check_compile(device) -> None:
    """``compile`` true needs a working ``torch.compile`` on ``device``: compile and run a one-line function now, so
    that a PyTorch build whose compiler is broken or missing (no C++ toolchain for CPU kernels, a partial install)
    is named before anything is built or written, not met as a traceback at the first training step."""
    import torch
    try:
        double = torch.compile(lambda x: x * 2.0 + 1.0)
        ok = bool((double(torch.zeros(4, device=device)) == 1.0).all())
    except Exception as exc:  # noqa: BLE001  any failure of the compiler stack means: do not compile
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ConfigError(f"compile: torch.compile does not work on {device} with this PyTorch ({torch.__version__}: "
                          f"{type(exc).__name__}: {reason}); rerun with --compile false (also after --fast)") from None
    if not ok:
        raise ConfigError(f"compile: torch.compile gives wrong results on {device} with this PyTorch "
                          f"({torch.__version__}); rerun with --compile false (also after --fast)")
