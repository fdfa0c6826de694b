"""Checks that run before anything is built or written: devices, output paths, logging packages, the compiler.

This module sits below every other part of the package and imports none of them but ``repa.config``; the checks of a
dataset against the model live with the data (``repa.data.checks``).

Every function raises an error whose message names the argument or file and says how to fix it (``ConfigError``
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
        raise ConfigError(f"{flag} {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag} {device}: CUDA is not available on this machine (torch {torch.__version__}"
                             f"{' has no CUDA support' if torch.version.cuda is None else ' finds no GPU'}); "
                             f"use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{flag} {device}: MPS is not available on this machine; use --device cpu")


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


def _check_named(path, flag: str) -> None:
    """An empty path would write into the current folder: refuse it (a ConfigError, one line)."""
    if not str(path).strip():
        raise ConfigError(f"{flag}: give a path, got an empty string")


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """``path`` will be written as a file: it must not be a folder, and its folder must be writable."""
    _check_named(path, flag)
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
    _check_named(path, flag)
    target = Path(path)
    existing = _nearest_existing(target)
    if not existing.is_dir():
        where = f"{flag} {target}" + ("" if existing == target.absolute() else f": {existing}")
        raise NotADirectoryError(errno.ENOTDIR, f"{where} is a file, not a folder; give a folder path",
                                 str(existing))
    _probe_writable(existing, target, flag)


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


def compile_notice(device) -> str:
    """The line printed before the first compiled step, so that a progress bar waiting at 0 is explained. On a CPU
    compiling takes minutes: 10 steps of a small fmnist-REPA run (depth 4, width 128, batch 16) took 2.5 minutes
    to the first step compiled, 50 s for all ten eager (2 shared CPU cores; docs/BENCHMARKS.md)."""
    import torch
    where = torch.device(device).type
    cost = ("on a CPU that takes minutes (about 2.5 for a small model on 2 cores, where eager steps take seconds)"
            if where == "cpu" else "that takes a while")
    return (f"torch.compile (--fast or --compile): the first step compiles the network, and {cost}; the progress bar "
            "waits at 0 meanwhile (--compile false trains without compiling)")


_WRITE_HINTS = {errno.ENOSPC: "free space on that file system or choose another folder",
                errno.EFBIG: "the file exceeds a size limit of this system or file system",
                errno.EROFS: "the file system is read-only; choose a writable folder",
                errno.EACCES: "choose a folder you may write to"}
_WRITE_HINTS.update({errno.EDQUOT: _WRITE_HINTS[errno.ENOSPC], errno.EPERM: _WRITE_HINTS[errno.EACCES]})


def describe_os_error(exc: OSError) -> str:
    """A readable reason for an OSError raised by this project (message in strerror) or by the system, with what
    to do where the cause is the file system (full, read-only, no permission)."""
    reason = exc.strerror or str(exc)
    reason = f"{exc.filename}: {reason}" if exc.filename and str(exc.filename) not in reason else reason
    hint = _WRITE_HINTS.get(exc.errno)
    return f"{reason}; {hint}" if hint and hint not in reason else reason
