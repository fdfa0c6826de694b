"""Checkpoints: atomic, verifiable, loadable without unpickling arbitrary objects.

This project's checkpoint is a ``torch.save`` dict of tensors and plain values only (``weights_only=True`` loads
it); the resolved TrainConfig is embedded as JSON. ``load_model`` also reads the reference REPA checkpoints
(``model``/``ema``/``opt``/``args``/``steps``, ``args`` an argparse Namespace, allow-listed) and bare state dicts,
inferring the architecture from the stored args or from the state-dict shapes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import torch

from repa.config import ModelConfig, TrainConfig, from_dict
from repa.integrity import (add_state_digest, check_finite, checkpoint_write_error, describe_load_failure,
                            verify_state_digest)

FORMAT = "repa-checkpoint"
FORMAT_VERSION = 1
CKPT_PATTERN = re.compile(r"^(\d{8})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, or not a REPA/SiT checkpoint."""


# ---- writing -------------------------------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` through a temporary file and a rename, with a ``.sha256`` sidecar.

    The sidecar is written before the rename, so a visible checkpoint always has its digest; an interrupted
    write leaves only a ``.tmp`` file that nothing reads.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:    # the content digest travels inside the file too
        obj = add_state_digest(obj)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    sidecar_tmp = path.with_name(f".{path.name}.sha256.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        sidecar_tmp.write_text(digest + "\n")
        os.replace(sidecar_tmp, path.with_name(path.name + ".sha256"))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:      # torch.save reports a failed write as a RuntimeError
        error = checkpoint_write_error(path, exc)
        if error is None:
            raise
        raise error from None
    finally:
        tmp.unlink(missing_ok=True)
        sidecar_tmp.unlink(missing_ok=True)


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{step:08d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), folder / name) for name in os.listdir(folder) if (m := CKPT_PATTERN.match(name))]
    return sorted(found)


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int, milestone_every: int = 0) -> None:
    """Delete all but the newest ``keep_last`` checkpoints, keeping milestones (multiples of milestone_every)."""
    ckpts = list_checkpoints(run_dir)
    for step, path in ckpts[:-keep_last] if keep_last > 0 else []:
        if milestone_every > 0 and step % milestone_every == 0:
            continue
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)


# ---- reading -------------------------------------------------------------------------------------------------------

def load_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> dict:
    """Load a checkpoint dict safely (``weights_only=True``, argparse.Namespace allow-listed).

    Raises CheckpointError when the file is missing, fails its ``.sha256`` sidecar, is truncated or is not a
    torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    sidecar = path.with_name(path.name + ".sha256")
    if verify and sidecar.is_file():
        expected = sidecar.read_text().strip()
        if sha256_file(path) != expected:
            raise CheckpointError(f"checkpoint {path} is corrupt: its sha256 does not match {sidecar.name}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with disallowed globals, not a torch file
        raise CheckpointError(f"cannot read checkpoint {path}: {describe_load_failure(exc)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of weights")
    if verify:
        try:
            verify_state_digest(obj, path)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
    return obj


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[dict, Path] | None:
    """The newest checkpoint of a run that loads and verifies; broken newer ones are reported and skipped."""
    found = list_checkpoints(run_dir)
    for step, path in reversed(found):
        try:
            return load_checkpoint(path), path
        except CheckpointError as exc:
            warnings.warn(f"skipping checkpoint: {exc}")
    if found:       # never start again from step 0 silently over a run's broken checkpoints
        names = ", ".join(p.name for _, p in found)
        raise CheckpointError(f"every checkpoint of {run_dir} is corrupt or unreadable ({names}); "
                              f"restore them from a copy, or move the folder {Path(run_dir) / 'checkpoints'} away to "
                              f"start the run again from step 0")
    return None


# ---- architecture inference for reference checkpoints ----------------------------------------------------------------

HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16}
SIZE_BY_SHAPE = {(12, 384): "S", (12, 768): "B", (24, 1024): "L", (28, 1152): "XL"}


def infer_model_config(state: dict[str, torch.Tensor], args: dict | None = None) -> ModelConfig:
    """Rebuild the ModelConfig of a reference SiT/REPA state dict from its shapes (and its args when given)."""
    args = args or {}
    required = ("pos_embed", "x_embedder.proj.weight", "y_embedder.embedding_table.weight", "final_layer.linear.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"not a SiT/REPA state dict: missing {missing}")
    num_tokens, width = state["pos_embed"].shape[1:]
    patch_weight = state["x_embedder.proj.weight"]          # (D, C, p, p)
    in_channels, patch = patch_weight.shape[1], patch_weight.shape[2]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    grid = int(round(num_tokens ** 0.5))
    rows = state["y_embedder.embedding_table.weight"].shape[0]
    out_channels = state["final_layer.linear.weight"].shape[0] // (patch * patch)
    encoder_dims, projector_dim = [], 2048
    i = 0
    while f"projectors.{i}.4.weight" in state:
        encoder_dims.append(int(state[f"projectors.{i}.4.weight"].shape[0]))
        projector_dim = int(state[f"projectors.{i}.0.weight"].shape[0])
        i += 1
    num_classes = int(args.get("num_classes", rows - 1 if rows % 10 == 1 else rows))
    class_dropout = float(args.get("cfg_prob", 0.1 if rows == num_classes + 1 else 0.0))
    size = SIZE_BY_SHAPE.get((depth, width))
    name = f"SiT-{size}/{patch}" if size else str(args.get("model", f"SiT-custom/{patch}"))
    # Heads are not visible in shapes: the paper's widths have fixed head counts, others use 64-d heads.
    heads = int(args.get("num_heads", HEADS_BY_WIDTH.get(int(width), max(1, int(width) // 64))))
    encoder_depth = int(args.get("encoder_depth", min(8, depth)))
    return ModelConfig(
        name=name, depth=depth, hidden_size=int(width), num_heads=heads, patch_size=int(patch),
        input_size=grid * patch, in_channels=int(in_channels), num_classes=num_classes,
        class_dropout=class_dropout if rows == num_classes + 1 else 0.0,
        encoder_depth=encoder_depth, encoder_dims=tuple(encoder_dims), projector_dim=projector_dim,
        qk_norm="blocks.0.attn.q_norm.weight" in state, learn_sigma=out_channels == 2 * in_channels,
        space="latent",
    )


def _strip_prefixes(state: dict) -> dict:
    """Remove DDP / torch.compile prefixes (``module.``, ``_orig_mod.``) from state-dict keys."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_model(path: str | os.PathLike, *, which: str = "ema", device: str | torch.device = "cpu"):
    """Load a network in eval mode from a checkpoint of this project, a reference REPA checkpoint or a state dict.

    Args:
        path: the checkpoint file.
        which: ``ema`` (default, what the papers evaluate) or ``model`` (the live weights).
        device: where to put the model.
    Returns:
        The network, with ``.config`` (ModelConfig), ``.train_config`` (TrainConfig or None) and ``.step``.
    """
    from repa.models import build_model
    if which not in ("ema", "model"):
        raise ValueError(f"which must be 'ema' or 'model', got {which!r}")
    ckpt = load_checkpoint(path)
    train_config, args = None, {}
    if ckpt.get("format") == FORMAT:
        train_config = from_dict(TrainConfig, json.loads(ckpt["config"]))
        model_cfg = train_config.model
        state = ckpt[which]
    elif which in ckpt or "model" in ckpt or "ema" in ckpt:
        state = ckpt.get(which) or ckpt.get("ema") or ckpt.get("model")
        args = ckpt.get("args")
        args = vars(args) if isinstance(args, argparse.Namespace) else (args if isinstance(args, dict) else {})
        state = _strip_prefixes(state)
        model_cfg = infer_model_config(state, args)
    elif "pos_embed" in ckpt or "module.pos_embed" in ckpt:
        state = _strip_prefixes(ckpt)
        model_cfg = infer_model_config(state)
    else:
        raise CheckpointError(f"{path} is not a REPA/SiT checkpoint: expected keys 'ema'/'model' (with 'args', "
                              f"'steps') or a SiT state dict; found {sorted(ckpt)[:10]}")
    if train_config is None:         # released DiT and SiT state dicts share one layout: settle the family
        from repa.models.dit import resolve_released_family
        model_cfg = resolve_released_family(model_cfg, path=path, args=args)
    try:
        check_finite(state, path, f"{which} weights")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    model = build_model(model_cfg)
    missing, unexpected = model.load_state_dict(_strip_prefixes(state), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match {model_cfg.name}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    model.train_config = train_config
    model.step = int(ckpt.get("steps", 0))
    return model.to(device).eval().requires_grad_(False)
