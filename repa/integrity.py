"""Corruption never passes silently: a digest inside every checkpoint, finite weights, safe weight files.

``torch.load`` does not verify the CRCs of its zip archive, so a flipped byte in a checkpoint loads as a wrong
value. ``state_digest`` hashes the content of a checkpoint dict (every tensor's dtype, shape and bytes, every plain
value, every key, in a fixed order); the digest is stored in the checkpoint itself (``content_sha256``) as well as
in the ``.sha256`` sidecar of the file, and ``verify_state_digest`` recomputes it on every load, so a checkpoint
copied without its sidecar is still checked. ``check_finite`` refuses NaN/inf weights. ``load_weights_file`` reads
user-supplied weight files with ``weights_only=True`` and explains a refusal in one line.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re

import torch
from repa.config import ConfigError

DIGEST_KEY = "content_sha256"


def _update(digest, obj, key: str) -> None:
    digest.update(key.encode())
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            _update(digest, obj[k], f"{key}/{k!r}")
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{len(obj)}".encode())
        for i, v in enumerate(obj):
            _update(digest, v, f"{key}[{i}]")
    else:
        digest.update(f"V{type(obj).__name__}:{obj!r}".encode())


def state_digest(state: dict) -> str:
    """sha256 of a checkpoint dict's content (the ``content_sha256`` entry itself excluded)."""
    digest = hashlib.sha256()
    _update(digest, {k: v for k, v in state.items() if k != DIGEST_KEY}, "")
    return digest.hexdigest()


def add_state_digest(state: dict) -> dict:
    """``state`` with its ``content_sha256`` entry (a new dict; the tensors are shared)."""
    return {**{k: v for k, v in state.items() if k != DIGEST_KEY}, DIGEST_KEY: state_digest(state)}


def verify_state_digest(state: dict, path) -> None:
    """Raise ValueError when a loaded checkpoint's content differs from the digest stored inside it."""
    stored = state.get(DIGEST_KEY)
    if stored is None:
        return
    if not isinstance(stored, str) or state_digest(state) != stored:
        raise ConfigError(f"checkpoint {path} is corrupt: its content does not match the digest stored inside it "
                         f"(a flipped or damaged byte); use another checkpoint")


def check_finite(state: dict, path, what: str = "weights") -> None:
    """Raise ValueError naming the first floating tensor of ``state`` holding NaN or inf."""
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            bad = value[~torch.isfinite(value)].flatten()[0].item()
            raise ConfigError(f"checkpoint {path} holds non-finite {what} ({name} contains {bad}); the file is "
                             f"corrupt or the run diverged before it was written: use an earlier checkpoint")


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def describe_load_failure(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in a few words (no torch boilerplate)."""
    if isinstance(exc, pickle.UnpicklingError):
        found = _GLOBAL.search(str(exc))
        if found:
            return (f"it is not a weights-only file: it refers to the Python object {found.group(1)}, which was "
                    f"blocked; nothing in it was executed")
        return "it is not a torch file (or it is damaged)"
    first = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"it is truncated, damaged or not a torch file ({type(exc).__name__}: {first})"


def load_weights_file(path: str | os.PathLike, what: str = "weights"):
    """``torch.load(path, weights_only=True)`` with one-line errors for files that are not plain weight files.

    Raises:
        FileNotFoundError: no such file. ValueError: a pickle that refers to Python objects (nothing of it was
        executed: the name of the blocked global is given), or not a torch file at all.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        name = f" (it refers to the Python object {found.group(1)}, which was blocked)" \
            if found else ""
        raise ConfigError(f"{what} file {path} is not a weights-only file{name}; nothing in it was executed. "
                         f"Give a state dict of tensors (torch.save(model.state_dict(), ...))") from None
    except Exception as exc:  # zip errors, truncated files, random bytes
        raise ConfigError(f"{what} file {path} is not a readable torch weights file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None


def load_state_dict_file(path: str | os.PathLike, what: str = "weights") -> dict:
    """``load_weights_file`` that also requires a dict whose values are tensors (nested dicts allowed)."""
    obj = load_weights_file(path, what)
    if not isinstance(obj, dict):
        raise ConfigError(f"{what} file {path} holds a {type(obj).__name__}, not a state dict of tensors")

    def has_tensor(o):
        return isinstance(o, torch.Tensor) or (isinstance(o, dict) and any(has_tensor(v) for v in o.values()))
    if not has_tensor(obj):
        raise ConfigError(f"{what} file {path} holds no tensors (keys {sorted(map(str, obj))[:5]}); it is not a "
                         f"state dict of weights")
    return obj


def checkpoint_write_error(path, exc: BaseException) -> OSError | None:
    """A one-line OSError for a checkpoint write that failed in the file system (disk full, quota, read-only, size
    limit), or None when ``exc`` does not come from the file system (then it is a bug to show as it is)."""
    cause = exc if isinstance(exc, OSError) else next(
        (e for e in (exc.__cause__, exc.__context__) if isinstance(e, OSError)), None)
    if cause is None:
        return None
    code = cause.errno or 0
    reason = os.strerror(code) if code else str(cause)
    return OSError(code, f"cannot write checkpoint {path} ({reason}); the earlier checkpoints are intact: free space "
                         f"(or fix the folder) and rerun the same command to resume from the last of them")
