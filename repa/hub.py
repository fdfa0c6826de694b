"""Models shared the way the field shares them: a folder with ``model.safetensors`` and ``config.json``.

``repa.checkpoint.export_model(checkpoint, out)`` writes the folder (``repa export``): the EMA (or live) weights as safetensors,
and a ``config.json`` holding the model config (to rebuild the network), the training config (provenance: the
objective, its interpolant, the encoders) and the step. ``repa.load_model`` reads such a folder, or a Hugging Face
Hub repository holding one (``owner/name``, fetched through ``huggingface_hub``; with ``HF_HUB_OFFLINE=1`` or no
network only the local cache is used).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path

from repa.config import ConfigError
from repa.utils import sha256_file

FOLDER_FORMAT = "repa-model"
FOLDER_FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$")


def is_model_folder(path: str | os.PathLike) -> bool:
    """True for a folder written by ``export_model`` (or one laid out like it)."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def looks_like_hub_id(text: str) -> bool:
    """``owner/name`` (optionally ``@revision``) that is not an existing local path."""
    return bool(HUB_ID.match(str(text))) and not os.path.exists(text)


class ModelFolderError(ConfigError):
    """An exported model folder is unreadable or not in this format."""


def check_export_folder(out: str | os.PathLike, overwrite: bool = False) -> None:
    """``out`` may receive an exported model: a folder (or nothing yet) holding neither file the export writes,
    unless ``overwrite``; a FileExistsError names the file that would be replaced."""
    from repa.preflight import check_output_dir
    check_output_dir(out, "OUT")
    existing = [Path(out) / name for name in (WEIGHTS_NAME, CONFIG_NAME) if os.path.lexists(Path(out) / name)]
    if existing and not overwrite:
        raise FileExistsError(errno.EEXIST, f"{existing[0]} exists; the export would replace it: give an empty "
                                            "folder, or pass --overwrite", str(existing[0]))


def write_model_folder(out: str | os.PathLike, state: dict, meta: dict, overwrite: bool = False) -> Path:
    """Write ``state`` (tensors) as ``out/model.safetensors`` and ``meta`` (with the weights file's sha256, which
    ``read_model_folder`` checks) as ``out/config.json``, atomically; never replaces a file unless ``overwrite``."""
    from safetensors.torch import save

    from repa.utils import atomic_write, atomic_write_text
    out = Path(out)
    check_export_folder(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}
    payload = save(tensors, metadata={"format": "pt"})
    atomic_write(out / WEIGHTS_NAME, lambda f: f.write(payload))
    atomic_write_text(out / CONFIG_NAME, json.dumps({"format": FOLDER_FORMAT, "format_version": FOLDER_FORMAT_VERSION,
                                                     **meta, "weights_sha256": hashlib.sha256(payload).hexdigest()},
                                                    indent=2) + "\n")
    return out


def read_model_folder(folder: str | os.PathLike):
    """(ModelConfig, TrainConfig or None, state dict, step) of an exported folder; errors name the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from repa.config import ConfigError, ModelConfig, from_dict, train_config_from_dict
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"cannot read {config_path}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FOLDER_FORMAT:
        raise ModelFolderError(f"{config_path} is not a repa model config (expected \"format\": "
                              f"\"{FOLDER_FORMAT}\"; write one with `repa export CKPT OUT`)")
    if int(meta.get("format_version", 0)) > FOLDER_FORMAT_VERSION:
        raise ModelFolderError(f"{config_path} has format_version {meta['format_version']}; this repa reads up to "
                              f"{FOLDER_FORMAT_VERSION}: upgrade repa")
    try:
        model_cfg = from_dict(ModelConfig, meta["model"], prefix="model.")
        train_cfg = train_config_from_dict(meta["train_config"]) if meta.get("train_config") else None
    except (KeyError, ConfigError, TypeError) as exc:
        raise ModelFolderError(f"{config_path}: {exc}") from None
    expected = meta.get("weights_sha256")
    if expected is not None and sha256_file(folder / WEIGHTS_NAME) != expected:
        raise ModelFolderError(f"{folder / WEIGHTS_NAME} is corrupt: its sha256 does not match weights_sha256 in "
                               f"{config_path} (a changed or damaged byte); export the checkpoint again")
    try:
        state = load_file(str(folder / WEIGHTS_NAME))
    except (OSError, SafetensorError) as exc:
        raise ModelFolderError(f"cannot read {folder / WEIGHTS_NAME}: {exc}") from None
    return model_cfg, train_cfg, state, int(meta.get("step", 0)), str(meta.get("weights", "ema"))


def hub_folder(repo_id: str) -> Path:
    """The local snapshot of a Hub repository holding an exported model (downloaded when needed).

    Honours ``HF_HUB_OFFLINE=1`` (and ``repa.offline``'s quick network check): offline, only the local cache is
    read, and a missing model is one clear error saying how to use a local folder instead.
    """
    from repa.offline import hub_is_reachable, offline_hint
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers/diffusers
        raise FileNotFoundError(f"{repo_id} is neither a file nor a folder, and huggingface_hub is not installed "
                                "to fetch it from the Hub") from None
    repo, _, revision = repo_id.partition("@")
    local_only = not hub_is_reachable()
    try:
        path = snapshot_download(repo, revision=revision or None, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
                                 local_files_only=local_only)
    except LocalEntryNotFoundError:
        raise FileNotFoundError(f"{repo_id}: not a local file or folder, and not in the Hugging Face cache "
                                f"({offline_hint()}); download it where there is a network (`hf download {repo} "
                                f"--local-dir DIR`) and pass DIR") from None
    except Exception as exc:  # noqa: BLE001  repository missing, gated, a network error mid-way
        raise FileNotFoundError(f"{repo_id}: not a local file or folder, and the Hub could not provide it "
                                f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    if not is_model_folder(path):
        raise FileNotFoundError(f"{repo_id} holds no {WEIGHTS_NAME} + {CONFIG_NAME} exported by `repa export`")
    return Path(path)
