"""``train(cfg)``: REPA training from one CPU process to many GPUs, with exact resume.

The loop knows no objective: the objective (``repa.objectives``, chosen by ``objective.kind``) draws the inputs of
each step from named random streams of (seed, step) for the whole global batch, each rank and micro-batch taking
its slice (one process and N processes with the same global batch compute the same thing, and a resumed run
repeats exactly what an uninterrupted one does), and returns its loss as a total and named terms, which the loop
sums over micro-batches and logs without knowing them.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from repa import distributed
from repa.checkpoint import TrainingState, list_checkpoints, saved_config
from repa.conditions import condition_of
from repa.config import ConfigError, TrainConfig, diff, to_json, train_config_from_dict
from repa.data.loader import BatchLoader
from repa.interrupt import GracefulStop, Interrupted
from repa.models import FeaturesView, build_model
from repa.objectives import StepContext, get_objective, validate
from repa.preflight import check_output_dir, compile_notice
from repa.runlock import claim_folder, clean_stale_temp_files
from repa.teachers import Teachers
from repa.training_utils import MetricsLog, NonFiniteError, lr_at, sample_preview
from repa.utils import atomic_write_text, autocast_context

# Fields that may change when a run resumes without --allow-config-change.
RESUME_SAFE_FIELDS = {"max_steps", "log_every", "ckpt_every", "keep_last", "milestone_every", "sample_every", "sample_steps", "sample_vae",
                      "data.num_workers", "wandb", "tensorboard", "run_dir", "compile", "max_skipped_steps"}
RESUME_SAFE_SECTIONS = {"wandb_run"}              # every field of these sections (where the logs go)


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves: its final step, the path of its last checkpoint, last metrics."""
    step: int
    checkpoint: Path | None
    metrics: dict


# ---- helpers -----------------------------------------------------------------------------------------------------

def _run_config(cfg: TrainConfig) -> TrainConfig | None:
    """The config of the run in ``cfg.run_dir``: the one inside its newest checkpoint that holds the requested
    network (checkpoints of another model are skipped at resume), else inside its newest readable checkpoint, else
    ``config.json``; None when no checkpoint claims the folder (a config without any checkpoint claims nothing)."""
    found = list_checkpoints(cfg.run_dir)
    if not found:
        return None
    newest = None
    for _, path in reversed(found):
        saved = saved_config(path)
        if saved is not None and saved.model == cfg.model:
            return saved
        newest = newest or saved
    saved = Path(cfg.run_dir) / "config.json"
    return newest or (train_config_from_dict(json.loads(saved.read_text())) if saved.is_file() else None)


def _check_run_dir(cfg: TrainConfig, allow_config_change: bool) -> None:
    """Refuse to reuse a run directory whose run's config (the checkpoints' own, ``config.json`` only without
    them) differs beyond resume-safe fields; nothing is written here (``config.json`` once the run has resumed)."""
    old = _run_config(cfg)
    if old is not None:
        changed = {k: v for k, v in diff(old, cfg).items() if k not in RESUME_SAFE_FIELDS
                   and k.split(".")[0] not in RESUME_SAFE_SECTIONS}
        model = {k: v for k, v in changed.items() if k.startswith("model.")}
        if model and allow_config_change:      # no checkpoint of the run could load into another network
            listing = "; ".join(f"{k}: {old_v!r} -> {new_v!r}" for k, (old_v, new_v) in model.items())
            raise ConfigError(f"--allow-config-change cannot change the network of run {cfg.run_dir} ({listing}): "
                              "its checkpoints hold the old one; use another run_dir")
        if changed and not allow_config_change:
            listing = "; ".join(f"{k}: {old_v!r} -> {new_v!r}" for k, (old_v, new_v) in changed.items())
            raise ConfigError(f"run directory {cfg.run_dir} belongs to a run with a different config ({listing}). "
                              "Use another run_dir, or pass --allow-config-change to resume with these changes.")


def _micro_batch(inputs: dict, part: slice) -> dict:
    """``inputs`` with its per-sample entries (tensors, lists of tensors) sliced to the micro-batch ``part``."""
    return {k: v[part] if isinstance(v, torch.Tensor) else [m[part] for m in v] if isinstance(v, list) else v
            for k, v in inputs.items()}


def _projectors_may_idle(cfg: TrainConfig) -> bool:
    """Whether some steps leave the projectors without a gradient (lambda 0 from the start or after
    ``align_stop_step``); DDP must then look for unused parameters instead of waiting for their gradients."""
    o = cfg.objective
    has_projectors = bool(cfg.model.encoder_dims)
    return has_projectors and (o.proj_coeff == 0 or o.align_stop_step > 0)


def _open_dataset(cfg: TrainConfig, dataset):
    if dataset is not None:
        return dataset
    if not cfg.data.path:
        raise ConfigError("data.path: no dataset given; prepare one with `repa prepare` and pass --data.path DIR")
    from repa.data.layouts import open_folder      # a prepared dataset, or a reference folder read as it is
    return open_folder(cfg.data.path)


# ---- the training loop -------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, *, dataset=None, encoders=None, allow_config_change: bool = False,
          device: str | None = None, progress: bool = True, stop_at_step: int | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg`` while holding its run directory's lock (see ``_train``).

    One writer per run: a second process on the same ``run_dir`` is refused with the holder's pid; a first start
    that fails before writing anything leaves no run directory behind.
    """
    validate(cfg)                                  # a wrong argument (not a TrainConfig) before any folder is made
    if device is not None:
        from repa.preflight import check_device
        check_device(str(device), "device")
    rank = int(os.environ.get("RANK", 0))
    with claim_folder(cfg.run_dir, "run", enabled=rank == 0):
        return _train(cfg, dataset=dataset, encoders=encoders, allow_config_change=allow_config_change,
                      device=device, progress=progress, stop_at_step=stop_at_step)


def check_config(cfg: TrainConfig) -> None:
    """The checks of ``cfg`` that need neither data nor a device (``repa train`` runs them first; ``--dry-run``
    stops after them): the fields and the objective, the encoders, the packages the logging needs."""
    from repa.encoders import check_train_encoders
    from repa.fields import collect
    from repa.preflight import check_logging_packages
    collect(lambda: validate(cfg), lambda: check_train_encoders(cfg))     # every problem in one error
    check_logging_packages(cfg)


def _train(cfg: TrainConfig, *, dataset=None, encoders=None, allow_config_change: bool = False,
           device: str | None = None, progress: bool = True, stop_at_step: int | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; returns when ``max_steps`` (or ``stop_at_step``) is reached.

    Args:
        cfg: the resolved config, already validated by ``train`` before any folder was claimed.
        dataset: an in-memory dataset (``repa.data.memory.ArrayDataset``) instead of ``cfg.data.path``.
        encoders: encoder objects (uint8 images -> (B, N, E)) instead of loading ``cfg.encoders`` by name.
        allow_config_change: resume even though non-resume-safe config fields differ from the saved run.
        device: default ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
        stop_at_step: stop early at this step (tests use it to simulate an interruption).
    """
    objective = get_objective(cfg.objective.kind)
    from repa.preflight import check_logging_packages
    check_logging_packages(cfg)
    process = distributed.init(device)
    dev = process.device
    if cfg.compile:
        from repa.preflight import check_compile
        check_compile(dev)
    if cfg.global_batch_size % (process.world_size * cfg.grad_accum_steps):
        raise ConfigError(f"global_batch_size={cfg.global_batch_size} is not divisible by world size "
                          f"{process.world_size} x grad_accum_steps {cfg.grad_accum_steps}")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    dataset = _open_dataset(cfg, dataset)
    objective.check_dataset(cfg, dataset)          # against the manifest, before anything is built or written
    teachers = Teachers.load(cfg, objective.teacher_needs(cfg), dataset, encoders, dev)
    if process.is_main:
        check_output_dir(cfg.run_dir, "run_dir")
    _check_run_dir(cfg, allow_config_change)
    if process.is_main:                            # half-written files of a killed writer of this run
        clean_stale_temp_files(cfg.run_dir)
        clean_stale_temp_files(Path(cfg.run_dir) / "checkpoints")

    # -- model, EMA, optimiser (identical init on every rank: seeded before building) --------------------------
    torch.manual_seed(cfg.seed)
    net = build_model(cfg.model).to(dev)
    if cfg.objective.proj_coeff == 0:
        net.projectors.requires_grad_(False)       # the vanilla twin keeps identical init but trains no projector
    net.gradient_checkpointing = cfg.activation_checkpointing
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    fsdp = cfg.parallel == "fsdp" and process.world_size > 1
    if fsdp:                                       # EMA sharded like the model: its update is shard-local
        net, ema = distributed.shard(net), distributed.shard(ema)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps,
                            weight_decay=cfg.optim.weight_decay, fused=cfg.optim.fused or None)  # None: torch's default
    scaler = torch.amp.GradScaler(dev.type) if cfg.precision == "fp16" else None

    per_rank = cfg.global_batch_size // process.world_size
    condition = condition_of(cfg.model)
    keys = ([condition.batch_key] if condition.batch_key else []) + teachers.batch_keys
    keys += objective.batch_keys(cfg)             # latents or images (REPA-E: images, its VAE encodes them)
    keys = list(dict.fromkeys(keys))               # a live teacher and a pixel model both read the images
    loader = BatchLoader(dataset, per_rank, seed=cfg.seed, rank=process.rank, world_size=process.world_size,
                         num_workers=cfg.data.num_workers, pin_memory=dev.type == "cuda", keys=keys,
                         readers=condition.readers)
    log = None
    try:
        state = TrainingState(cfg, net, ema, opt, scaler, loader, fsdp, objective_state=objective.build_state(cfg, dev))
        last_ckpt = state.resume(cfg.run_dir)
        if process.is_main:                        # written once the run can start (or resume): never before
            atomic_write_text(Path(cfg.run_dir) / "config.json", to_json(cfg))
        if last_ckpt is not None and process.is_main:
            print(f"resumed from step {state.step} (checkpoint {last_ckpt})", flush=True)

        # The training entry point returns the projector outputs: forward_features, through DDP / compile.
        features = FeaturesView(net)
        if process.world_size > 1 and not fsdp:
            features = torch.nn.parallel.DistributedDataParallel(
                features, device_ids=[dev.index] if dev.type == "cuda" else None,
                find_unused_parameters=_projectors_may_idle(cfg))
        if cfg.compile:
            features = torch.compile(features)
            if process.is_main:
                print(compile_notice(dev), flush=True)

        log = MetricsLog(cfg, enabled=process.is_main, start_step=state.step, progress=progress)
        with GracefulStop() as stop:               # Ctrl-C / SIGTERM: checkpoint at the end of the current step
            last_ckpt = _train_loop(cfg, state, objective, features, params, teachers, log, process,
                                    stop_at_step, last_ckpt, stop)
    except NonFiniteError as exc:
        raise NonFiniteError(exc.step, f"{exc.reason}; the last good checkpoint is {exc.checkpoint}. Likely causes: "
                             "a learning rate too high for this batch size, fp16 overflow (try precision=bf16), or "
                             "corrupt input data") from None
    finally:                                       # loader workers and log writers close on any exit
        if log is not None:
            log.close()
        loader.close()
    return TrainResult(state.step, last_ckpt, log.last)


def _train_loop(cfg: TrainConfig, state: TrainingState, objective, features, params, teachers: Teachers,
                log: MetricsLog, process, stop_at_step: int | None, last_ckpt: Path | None,
                stop: GracefulStop | None = None) -> Path | None:
    """The labelled phases of every step, until ``max_steps`` (or ``stop_at_step``); returns the last checkpoint.

    A signal recorded by ``stop`` ends the run after the current step's checkpoint (``Interrupted``)."""
    net, ema, opt, scaler, loader = state.net, state.ema, state.opt, state.scaler, state.loader
    dev = process.device
    fsdp = state.sharded
    per_rank = cfg.global_batch_size // process.world_size
    mine = slice(process.rank * per_rank, (process.rank + 1) * per_rank)
    micro = per_rank // cfg.grad_accum_steps
    first_bad = torch.full((), -1, dtype=torch.long, device=dev)
    skipped = good = 0
    end = min(cfg.max_steps, stop_at_step) if stop_at_step is not None else cfg.max_steps
    ema_params, net_params = distributed.local_tensors(ema.parameters()), distributed.local_tensors(net.parameters())
    ema_features, live_features, parts = FeaturesView(ema), FeaturesView(net), state.objective_state
    bound = condition_of(cfg.model).bind(loader.dataset, dev)   # the null value on the device once, not every step
    while state.step < end:
        step = state.step
        # -- data, and the objective's inputs for this step (its draws: global batch, then this rank's rows) ----
        ctx = StepContext(cfg, step, next(loader), mine, dev, teachers, ema_features, live_features, parts, bound)
        inputs = objective.inputs(ctx)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg.optim, step)

        # -- forward/backward over micro-batches ----------------------------------------------------------------
        loss_sum = torch.zeros((), device=dev)
        terms: dict[str, torch.Tensor] = {}
        for k in range(cfg.grad_accum_steps):
            part = slice(k * micro, (k + 1) * micro)
            sync = k == cfg.grad_accum_steps - 1 or process.world_size == 1
            if fsdp:
                net.set_requires_gradient_sync(sync)
            ctx_sync = contextlib.nullcontext() if sync or fsdp else features.no_sync()
            with ctx_sync, autocast_context(cfg.precision, dev):
                out = objective.loss(features, _micro_batch(inputs, part), cfg.objective)
                loss = out.total / cfg.grad_accum_steps
                (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_sum += out.total.detach() / cfg.grad_accum_steps
            for name, value in out.terms.items():
                terms[name] = terms.get(name, 0.0) + value.detach() / cfg.grad_accum_steps

        # -- optimiser step, clipping, non-finite guard, EMA ----------------------------------------------------
        if scaler is not None:
            scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf"))
        bad = ~torch.isfinite(loss_sum) if scaler is not None else ~(torch.isfinite(loss_sum)
                                                                      & torch.isfinite(grad_norm))
        if cfg.max_skipped_steps > 0 and bool(bad):
            skipped += 1
            if not all(bool(torch.isfinite(p).all()) for p in net_params):    # skipping cannot repair the weights
                raise NonFiniteError(step, "the weights are no longer finite (an earlier update diverged), so "
                                     "skipping steps cannot recover", last_ckpt)
            if skipped > cfg.max_skipped_steps:
                raise NonFiniteError(step, "more than max_skipped_steps non-finite steps", last_ckpt)
            opt.zero_grad(set_to_none=True)
            state.step += 1
            if not good and state.step >= end:     # never "finished" without one update: that is not a run
                raise NonFiniteError(step, f"every step of this run ({skipped}) was non-finite and skipped", last_ckpt)
            if good and (state.step % cfg.ckpt_every == 0 or state.step == end):
                last_ckpt = state.save(cfg.run_dir, cfg.keep_last, cfg.milestone_every)
            continue
        good += 1
        first_bad = torch.where((first_bad < 0) & bad, torch.full_like(first_bad, step), first_bad)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, net_params, 1.0 - cfg.ema_decay)
        state.step += 1
        state.images_seen += cfg.global_batch_size
        step = state.step

        # -- logging, checkpoints, previews (host syncs happen only here) ----------------------------------------
        log.accumulate({"loss": loss_sum, **terms, "grad_norm": grad_norm})
        stop_signal = stop.check(step, cfg.log_every, process.world_size, dev) if stop is not None else 0
        at_ckpt = step % cfg.ckpt_every == 0 or step == end or bool(stop_signal)
        if step % cfg.log_every == 0 or at_ckpt:
            if int(first_bad) >= 0:
                raise NonFiniteError(int(first_bad), "loss or gradient norm is not finite", last_ckpt)
            log.write(step, state.images_seen, lr=opt.param_groups[0]["lr"])
        if at_ckpt:
            last_ckpt = state.save(cfg.run_dir, cfg.keep_last, cfg.milestone_every)
        if stop_signal:
            raise Interrupted(stop_signal, step, last_ckpt)
        if cfg.sample_every and step % cfg.sample_every == 0 and process.is_main:
            sample_preview(ema, cfg, step, log)
    return last_ckpt
