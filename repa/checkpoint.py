"""Checkpoints: atomic, verifiable, loadable without unpickling arbitrary objects.

``TrainingState`` is the one place that saves and restores a run (model, EMA, optimizer, loss scaler, loader
position, RNG states, step; FSDP shards gathered), symmetrically as EDM2's checkpoint I/O does.

This project's checkpoint is a ``torch.save`` dict of tensors and plain values only (``weights_only=True`` loads
it); the resolved TrainConfig is embedded as JSON. ``load_model`` also reads the reference REPA checkpoints
(``model``/``ema``/``opt``/``args``/``steps``, ``args`` an argparse Namespace, allow-listed) and bare state dicts,
inferring the architecture from the stored args or from the state-dict shapes; the official checkpoints of REPA's
successors too (SRA, iREPA, HASTE, REG), whose training-only heads are dropped by name (``TRAINING_ONLY_HEADS``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from repa import distributed
from repa.config import ConfigError, ModelConfig, TrainConfig, diff, to_json, train_config_from_dict
from repa.integrity import (DIGEST_KEY, add_state_digest, check_finite, checkpoint_write_error, describe_load_failure,
                            verify_state_digest)
from repa.models import build_model, heads_of, model_name
from repa.models.released import ORIGINS, resolve_origin
from repa.utils import atomic_write, atomic_write_text, library_versions, sha256_file

FORMAT = "repa-checkpoint"
FORMAT_VERSION = 1
CKPT_PATTERN = re.compile(r"^(\d{8})\.pt$")


class CheckpointError(ConfigError):
    """A checkpoint is missing, truncated, corrupt, or not a REPA/SiT checkpoint."""


# ---- writing -------------------------------------------------------------------------------------------------------

def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` through a temporary file and a rename, with a ``.sha256`` sidecar.

    The sidecar is written before the rename, so a visible checkpoint always has its digest; an interrupted
    write leaves only a ``.tmp`` file that nothing reads.
    """
    path = Path(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:    # the content digest travels inside the file too
        obj = add_state_digest(obj)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        atomic_write(tmp, lambda f: torch.save(obj, f))
        atomic_write_text(path.with_name(path.name + ".sha256"), sha256_file(tmp) + "\n")
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:      # torch.save reports a failed write as a RuntimeError
        error = checkpoint_write_error(path, exc)
        if error is None:
            raise
        raise error from None
    finally:
        tmp.unlink(missing_ok=True)


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
    if verify and sidecar.is_file():     # ours ("HASH") or sha256sum's ("HASH  NAME", "HASH *NAME")
        expected = (sidecar.read_text(errors="replace").split() or [""])[0].lstrip("\\").lower()
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
        if not sidecar.is_file() and DIGEST_KEY not in obj and obj.get("format") == FORMAT:
            warnings.warn(f"checkpoint {path} has no digest (neither {sidecar.name} nor one inside it): its content "
                          f"cannot be verified", stacklevel=2)
    return obj


def saved_config(path: str | os.PathLike) -> TrainConfig | None:
    """The training config stored inside checkpoint ``path``, read without loading its tensors (memory-mapped);
    None when the file or its config cannot be read."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return train_config_from_dict(json.loads(obj["config"]))
    except Exception:  # noqa: BLE001 - any unreadable file: the caller falls back (resume reports it)
        return None


def latest_checkpoint(run_dir: str | os.PathLike, fits=None) -> tuple[dict, Path] | None:
    """The newest checkpoint of a run that loads, verifies and ``fits`` (a function of the state returning None, or
    why it does not fit); broken or unfitting newer ones are reported (one warning each) and skipped."""
    found = list_checkpoints(run_dir)
    for step, path in reversed(found):
        try:
            state = load_checkpoint(path)
            reason = fits(state) if fits is not None else None
            if reason is None:
                return state, path
            warnings.warn(f"skipping checkpoint {path}: {reason}")
        except CheckpointError as exc:
            warnings.warn(f"skipping checkpoint: {exc}")
    if found:       # never start again from step 0 silently over a run's broken checkpoints
        names = ", ".join(p.name for _, p in found)
        raise CheckpointError(f"every checkpoint of {run_dir} is corrupt, unreadable or of another model ({names}); "
                              f"restore them from a copy, or move the folder {Path(run_dir) / 'checkpoints'} away to "
                              f"start the run again from step 0")
    return None


# ---- the training state -------------------------------------------------------------------------------------------

@dataclass
class TrainingState:
    """Everything a run resumes from; ``state_dict`` and ``load_state_dict`` are inverses.

    With ``sharded`` (FSDP) the model, EMA and optimizer shards are gathered into full state dicts on save and
    scattered back on load; both are then collectives that every rank calls. RNG states are kept per rank.
    """
    cfg: TrainConfig
    net: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    loader: object                  # repa.data.loader.BatchLoader: state_dict() / load_state_dict()
    sharded: bool = False
    step: int = 0
    images_seen: int = 0
    objective_state: object = None  # the objective's own trained parts (REPA-E's VAE): state_dict / load_state_dict

    def state_dict(self) -> dict:
        """The checkpoint dict (tensors and plain values only; a collective under FSDP)."""
        if self.sharded:
            weights = {"model": distributed.full_model_state(self.net), "ema": distributed.full_model_state(self.ema),
                       "opt": distributed.full_optimizer_state(self.net, self.opt)}
        else:
            weights = {"model": self.net.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict()}
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "config": to_json(self.cfg), **weights,
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "steps": self.step, "images_seen": self.images_seen, "data": self.loader.state_dict(),
            "rng": distributed.all_gather_object(torch.get_rng_state()),
            "cuda_rng": distributed.all_gather_object(torch.cuda.get_rng_state() if cuda else None),
            "versions": library_versions("repa", "torch", "numpy"),
            **({"objective_state": self.objective_state.state_dict()} if self.objective_state is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        """Restore from a checkpoint dict written by ``state_dict`` (a collective under FSDP)."""
        if self.sharded:
            distributed.load_full_model_state(self.net, state["model"])
            distributed.load_full_model_state(self.ema, state["ema"])
            distributed.load_full_optimizer_state(self.net, self.opt, state["opt"])
        else:
            self.net.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["opt"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["data"])
        if self.objective_state is not None:
            self.objective_state.load_state_dict(state["objective_state"])
        self.step, self.images_seen = int(state["steps"]), int(state["images_seen"])
        rank, world_size = distributed.rank(), distributed.world_size()
        rng, cuda_rng = state.get("rng") or [], state.get("cuda_rng") or []
        if len(rng) == world_size:          # a run resumed on another number of ranks keeps fresh RNG states
            torch.set_rng_state(rng[rank])
        if len(cuda_rng) == world_size and cuda_rng[rank] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda_rng[rank])

    def save(self, run_dir: str | os.PathLike, keep_last: int, milestone_every: int = 0) -> Path:
        """Write ``run_dir/checkpoints/STEP.pt`` (rank 0) and prune old ones; every rank calls it."""
        state = self.state_dict()
        path = checkpoint_path(run_dir, self.step)
        if distributed.rank() == 0:
            atomic_torch_save(state, path)
            prune_checkpoints(run_dir, keep_last, milestone_every)
        distributed.barrier()
        return path

    def resume(self, run_dir: str | os.PathLike) -> Path | None:
        """Load the newest complete checkpoint of ``run_dir``, if any; returns its path."""
        found = latest_checkpoint(run_dir, fits=self._fits)
        if found is None:
            return None
        state, path = found
        self.load_state_dict(state)
        return path

    def _fits(self, state: dict) -> str | None:
        """None when checkpoint ``state`` holds this run's network, else what differs."""
        try:
            model = train_config_from_dict(json.loads(state["config"])).model
        except (KeyError, TypeError, ValueError) as exc:
            return f"its config cannot be read ({exc})"
        changed = {k: v for k, v in diff(model, self.cfg.model).items()}
        if changed:
            listing = "; ".join(f"model.{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            return f"it holds another model ({listing})"
        return None


# ---- architecture inference for reference checkpoints ----------------------------------------------------------------

def infer_model_config(state: dict[str, torch.Tensor], args: dict | None = None) -> ModelConfig:
    """Rebuild the ModelConfig of a reference SiT/REPA (or REG) state dict from its shapes (and its args when
    given)."""
    args = args or {}
    if "joint_blocks.0.x_block.attn.qkv.weight" in state:     # the reference's text-to-image MMDiT
        from repa.models.mmdit import config_from_state
        return config_from_state(state, args)
    required = ("pos_embed", "x_embedder.proj.weight", "final_layer.linear.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"not a SiT/REPA state dict: missing {missing}")
    num_tokens, width = state["pos_embed"].shape[1:]
    class_token = "cls_projectors2.weight" in state      # Martinser/REG: one extra token, first in pos_embed
    num_tokens -= int(class_token)
    patch_weight = state["x_embedder.proj.weight"]          # (D, C, p, p)
    in_channels, patch = patch_weight.shape[1], patch_weight.shape[2]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    grid = int(round(num_tokens ** 0.5))
    table = state.get("y_embedder.embedding_table.weight")    # absent: an unconditional network
    rows = 0 if table is None else table.shape[0]
    out_channels = state["final_layer.linear.weight"].shape[0] // (patch * patch)
    encoder_dims, projector_dim = [], 2048
    i = 0
    while f"projectors.{i}.4.weight" in state:
        encoder_dims.append(int(state[f"projectors.{i}.4.weight"].shape[0]))
        projector_dim = int(state[f"projectors.{i}.0.weight"].shape[0])
        i += 1
    num_classes = 0 if table is None else int(args.get("num_classes", rows - 1 if rows % 10 == 1 else rows))
    class_dropout = float(args.get("cfg_prob", 0.1 if rows == num_classes + 1 else 0.0))
    name = model_name("SiT", int(depth), int(width), int(patch))     # what the weights' shapes say it is
    # Heads are not visible in shapes: the paper's widths have fixed head counts, others use 64-d heads.
    heads = int(args.get("num_heads", heads_of(int(width))))
    encoder_depth = int(args.get("encoder_depth", min(8, depth)))
    return ModelConfig(
        name=name, depth=depth, hidden_size=int(width), num_heads=heads, patch_size=int(patch),
        input_size=grid * patch, in_channels=int(in_channels), num_classes=num_classes,
        class_dropout=class_dropout if table is not None and rows == num_classes + 1 else 0.0,
        encoder_depth=encoder_depth, encoder_dims=tuple(encoder_dims), projector_dim=projector_dim,
        qk_norm="blocks.0.attn.q_norm.weight" in state, learn_sigma=out_channels == 2 * in_channels,
        space="latent", class_token=class_token,
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


# Heads that the successors' official code trains and sampling never runs, by parameter-name pattern: dropped (with
# one warning line) from checkpoints without this project's config; everything else loads strictly.
TRAINING_ONLY_HEADS = (
    (re.compile(r"^ap_head\."), "ap_head.* (SRA's alignment head, vvvvvjdy/SRA)"),
    (re.compile(r"^projectors\.\d+\.projection_layer\."),
     "projectors.*.projection_layer.* (iREPA's projector, End2End-Diffusion/iREPA)"),
)


def drop_training_heads(state: dict, path=None) -> dict:
    """``state`` without the official SRA and iREPA training-only heads (``TRAINING_ONLY_HEADS``), with one warning
    line naming what was dropped; unchanged when it has none."""
    dropped = [label for pattern, label in TRAINING_ONLY_HEADS if any(pattern.match(k) for k in state)]
    if not dropped:
        return state
    warnings.warn(f"{path}: dropped the training-only {' and '.join(dropped)}: sampling does not use them",
                  stacklevel=3)
    return {k: v for k, v in state.items() if not any(pattern.match(k) for pattern, _ in TRAINING_ONLY_HEADS)}


@dataclass
class LoadedModel:
    """A network loaded from a checkpoint, with what the checkpoint says about it.

    Attributes:
        model: the network in eval mode, gradients off; ``model.config`` is its ``ModelConfig``.
        train_config: the run's ``TrainConfig`` (None for reference and released checkpoints).
        step: the training step the weights are from (0 when the file does not say).
        path: the checkpoint file.
    """
    model: torch.nn.Module
    train_config: TrainConfig | None = None
    step: int = 0
    path: Path | None = None

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def interpolant(self) -> str:
        """The interpolant path the network was trained on (``linear`` when the checkpoint does not say)."""
        return self.train_config.objective.path if self.train_config is not None else "linear"


def as_loaded(model: torch.nn.Module | LoadedModel) -> LoadedModel:
    """``model`` when it is a ``LoadedModel``; a bare network wrapped as one (no training config, step 0)."""
    return model if isinstance(model, LoadedModel) else LoadedModel(model)


def load_model(path: str | os.PathLike, *, which: str = "ema", device: str | torch.device = "cpu",
               origin: str = "auto", encoder_depth: int | None = None) -> LoadedModel:
    """Load a network in eval mode from a checkpoint of this project, a reference REPA checkpoint (or an official
    SRA, iREPA, HASTE or REG one: their training-only heads are dropped with one warning line), a state dict,
    a folder written by ``repa export`` (``model.safetensors`` + ``config.json``) or a Hugging Face Hub id of one.

    Args:
        path: the checkpoint file, an exported model folder, or ``owner/name`` on the Hub (``owner/name@revision``;
            downloaded through ``huggingface_hub``; offline, only its cache is read).
        which: ``ema`` (default, what the papers evaluate) or ``model`` (the live weights).
        device: where to put the model.
        origin: for a checkpoint without this project's config, whose network it holds: ``auto`` (the rule of
            ``repa.models.released.detect_origin``: the family from ``args.model`` or the file name, then
            learned-sigma outputs without a projector are willisma/SiT's), ``repa`` (REPA's SiT), ``sit``
            (willisma/SiT's, converted to repa's time convention) or ``dit`` (facebookresearch/DiT's).
        encoder_depth: the 1-based block the REPA projectors read, for a checkpoint that does not record it (a
            bare state dict with projectors). Without it such a file loads with the paper's block 8 (capped at the
            depth) and a warning: shapes cannot tell which block it was.
    Returns:
        A ``LoadedModel``: the network (``.model``, with ``.config``), the training config (or None) and the step.
    """
    if which not in ("ema", "model"):
        raise ConfigError(f"which must be 'ema' or 'model', got {which!r}")
    from repa.preflight import check_device
    check_device(str(device), "device")           # a CUDA device this machine lacks: one line, not an assertion
    if origin not in ORIGINS:
        raise ConfigError(f"origin must be one of {ORIGINS}, got {origin!r}")
    from repa import hub
    if not os.path.exists(path) and hub.looks_like_hub_id(str(path)):
        path = hub.hub_folder(str(path))
    if hub.is_model_folder(path):
        return _load_folder(Path(path), which=which, device=device, origin=origin, encoder_depth=encoder_depth)
    if Path(path).is_dir():
        raise CheckpointError(f"{path} is a folder without {hub.WEIGHTS_NAME} and {hub.CONFIG_NAME}: give a "
                              "checkpoint file (a run's checkpoints/STEP.pt) or a folder written by `repa export`")
    ckpt = load_checkpoint(path)
    train_config, args = None, {}
    if ckpt.get("format") == FORMAT:
        train_config = train_config_from_dict(json.loads(ckpt["config"]))
        model_cfg = train_config.model
        state = ckpt[which]
    elif which in ckpt or "model" in ckpt or "ema" in ckpt:
        state = ckpt.get(which) or ckpt.get("ema") or ckpt.get("model")
        args = ckpt.get("args")
        args = vars(args) if isinstance(args, argparse.Namespace) else (args if isinstance(args, dict) else {})
        state = drop_training_heads(_strip_prefixes(state), path)
        model_cfg = infer_model_config(state, args)
    elif "pos_embed" in ckpt or "module.pos_embed" in ckpt:
        state = drop_training_heads(_strip_prefixes(ckpt), path)
        model_cfg = infer_model_config(state)
    else:
        raise CheckpointError(f"{path} is not a REPA/SiT checkpoint: expected keys 'ema'/'model' (with 'args', "
                              f"'steps') or a SiT state dict; found {sorted(ckpt)[:10]}")
    if train_config is None:         # REPA, willisma/SiT and DiT checkpoints share one layout: settle which
        model_cfg = _settle_encoder_depth(model_cfg, encoder_depth, "encoder_depth" in args, path)
        model_cfg = resolve_origin(model_cfg, origin, path=path, args=args)
    else:
        _config_is_embedded(path, origin, encoder_depth)
    try:
        check_finite(state, path, f"{which} weights")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    model = _build_and_load(model_cfg, state, path, device)
    return LoadedModel(model, train_config, int(ckpt.get("steps", 0)), Path(path))


def _build_and_load(model_cfg: ModelConfig, state: dict, path, device) -> torch.nn.Module:
    model = build_model(model_cfg)
    missing, unexpected = model.load_state_dict(_strip_prefixes(state), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match {model_cfg.name}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return model.to(device).eval().requires_grad_(False)


def _config_is_embedded(path, origin: str, encoder_depth: int | None) -> None:
    if origin != "auto":
        raise ConfigError(f"{path} embeds its config; origin={origin!r} applies only to reference and released "
                         "checkpoints")
    if encoder_depth is not None:
        raise ConfigError(f"{path} embeds its config (encoder_depth included); encoder_depth applies only to state "
                         "dicts that do not record it")


def _settle_encoder_depth(cfg: ModelConfig, encoder_depth: int | None, recorded: bool, path) -> ModelConfig:
    """The projectors' block of a checkpoint without this project's config: given, recorded in its args, or the
    paper's 8 with a warning (the shapes of a state dict cannot tell)."""
    if encoder_depth is not None:
        if not 1 <= encoder_depth <= cfg.depth:
            raise ConfigError(f"encoder_depth must be in 1..{cfg.depth} (the model depth), got {encoder_depth}")
        return dataclasses.replace(cfg, encoder_depth=int(encoder_depth))
    if not recorded and cfg.encoder_dims:
        warnings.warn(f"{path} does not record which block its REPA projectors read; assuming block "
                      f"{cfg.encoder_depth} (the paper's 8, capped at the depth). Pass encoder_depth=K "
                      "(`--encoder-depth K`) if it was trained otherwise; sampling does not depend on it",
                      stacklevel=3)
    return cfg


def _load_folder(folder: Path, *, which: str, device, origin: str, encoder_depth: int | None) -> LoadedModel:
    """A folder written by ``repa.hub.export_model``: the weights it holds (EMA unless exported otherwise)."""
    from repa import hub
    _config_is_embedded(folder, origin, encoder_depth)
    try:
        model_cfg, train_config, state, step, meta_which = hub.read_model_folder(folder)
    except hub.ModelFolderError as exc:
        raise CheckpointError(str(exc)) from None
    if which != meta_which:
        raise ConfigError(f"{folder} holds the {meta_which!r} weights only (exported with which={meta_which!r}); "
                         f"export the checkpoint again with `--which {which}`")
    try:
        check_finite(state, folder, f"{which} weights")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    return LoadedModel(_build_and_load(model_cfg, state, folder, device), train_config, step, folder)


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, *, which: str = "ema",
                 origin: str = "auto", encoder_depth: int | None = None, overwrite: bool = False) -> Path:
    """Write ``out/model.safetensors`` + ``out/config.json`` (``repa export``) from anything ``load_model`` reads;
    for a REPA-E checkpoint also ``out/vae/``, its tuned VAE as a diffusers folder (``repa.e2e.export_vae``).

    ``config.json`` holds the model config (to rebuild the network), the training config (provenance: objective,
    interpolant, encoders; None for reference checkpoints), the step and which weights were exported (``ema`` by
    default, what the papers evaluate). ``load_model(out)`` gives back the same network; so do ``torch.hub.load``
    (``hubconf.py``) and a Hugging Face Hub id once the folder is uploaded.
    """
    from repa import hub
    from repa.config import to_dict
    hub.check_export_folder(out, overwrite)           # before anything is loaded: never replace a user's file
    loaded = load_model(checkpoint, which=which, origin=origin, encoder_depth=encoder_depth)
    meta = {"weights": which, "step": loaded.step, "source": os.path.basename(str(checkpoint)),
            "model": to_dict(loaded.config),
            "train_config": to_dict(loaded.train_config) if loaded.train_config is not None else None,
            "versions": library_versions("repa", "torch", "safetensors")}
    folder = hub.write_model_folder(out, loaded.model.state_dict(), meta, overwrite=overwrite)
    if loaded.train_config is not None and loaded.train_config.objective.kind == "repa-e":   # its tuned VAE too
        from repa.e2e import export_vae
        export_vae(load_checkpoint(checkpoint)["objective_state"], folder / "vae")
    return folder
