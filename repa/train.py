"""``train(cfg)``: REPA training from one CPU process to many GPUs, with exact resume.

Randomness of step s (diffusion times, noise, label dropout, posterior samples) is drawn for the whole global batch
from a generator seeded by (seed, s), and each rank / micro-batch takes its slice: one process and N processes with
the same global batch compute the same thing, and a resumed run repeats exactly what an uninterrupted one does.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from repa import distributed as D
from repa.checkpoint import (FORMAT, FORMAT_VERSION, atomic_torch_save, checkpoint_path, latest_checkpoint,
                             list_checkpoints, prune_checkpoints)
from repa.config import ConfigError, TrainConfig, diff, from_dict, to_dict, to_json, validate_train
from repa.interrupt import GracefulStop, Interrupted
from repa.preflight import check_dataset_for_model, check_output_dir
from repa.runlock import claim_folder, clean_stale_temp_files
from repa.losses import drop_labels, repa_loss, sample_time
from repa.models import build_model
from repa.training_utils import (MetricsLog, NonFiniteError, autocast_context, environment_versions,
                                 lambda_at, lr_at, sample_preview)

# Fields that may change when a run resumes without --allow-config-change.
RESUME_SAFE_FIELDS = {"max_steps", "log_every", "ckpt_every", "keep_last", "milestone_every", "sample_every",
                      "data.num_workers", "wandb", "tensorboard", "run_dir", "compile", "max_skipped_steps"}


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves: its final step, the path of its last checkpoint, last metrics."""
    step: int
    checkpoint: Path | None
    metrics: dict


# ---- helpers -----------------------------------------------------------------------------------------------------

def _check_run_dir(cfg: TrainConfig, allow_config_change: bool, is_main: bool) -> None:
    """Refuse to reuse a run directory whose saved config differs (beyond resume-safe fields)."""
    saved = Path(cfg.run_dir) / "config.json"
    if saved.exists() and list_checkpoints(cfg.run_dir):   # a config without any checkpoint claims nothing
        old = from_dict(TrainConfig, json.loads(saved.read_text()))
        changed = {k: v for k, v in diff(old, cfg).items() if k not in RESUME_SAFE_FIELDS}
        if changed and not allow_config_change:
            listing = "; ".join(f"{k}: {old_v!r} -> {new_v!r}" for k, (old_v, new_v) in changed.items())
            raise ConfigError(f"run directory {cfg.run_dir} belongs to a run with a different config ({listing}). "
                              "Use another run_dir, or pass --allow-config-change to resume with these changes.")
    if is_main:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        tmp = saved.with_name(f".config.json.tmp-{os.getpid()}")
        tmp.write_text(to_json(cfg))
        os.replace(tmp, saved)


def _step_randomness(cfg: TrainConfig, step: int, x_shape: tuple, need_eps: bool, device: torch.device):
    """Global-batch draws of step ``step`` on ``device``: times (G,), noise (G, ...), label-dropout uniforms (G,),
    posterior noise. A function of (seed, step) only, so ranks, micro-batches and resumes all agree."""
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
    G = cfg.global_batch_size
    t = sample_time(G, cfg.objective, generator=gen, device=device)
    noise = torch.randn((G, *x_shape), generator=gen, device=device)
    eps = torch.randn((G, *x_shape), generator=gen, device=device) if need_eps else None
    labels_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step + 7_777_777)
    uniforms = torch.rand(G, generator=labels_gen, device=device)
    return t, noise, uniforms, eps


def _clean_inputs(batch: dict, space: str, eps: torch.Tensor | None, device) -> torch.Tensor:
    """Model-space clean inputs: a fresh posterior sample of the stored latents, or pixels scaled to [-1, 1]."""
    if space == "latent":
        if "latent_mean" not in batch:
            raise ConfigError("model.space is 'latent' but the dataset has no latents; prepare it with "
                              "`repa prepare --vae ...`, or train in pixel space (model.space=pixel)")
        from repa.autoencoder import sample_latents
        return sample_latents(batch["latent_mean"].to(device, non_blocking=True),
                              batch["latent_std"].to(device, non_blocking=True), eps=eps)
    from repa.visualize import from_uint8
    return from_uint8(batch["image"].to(device, non_blocking=True))


def _teacher_tokens(batch: dict, encoders: list, cache_keys: list, precision: str, device) -> list[torch.Tensor]:
    """Frozen-encoder tokens of the clean images: from the token cache when valid, else computed now."""
    tokens = []
    for encoder, key in zip(encoders, cache_keys):
        if key is not None:
            tokens.append(batch[key].to(device, non_blocking=True).float())
        else:
            with torch.no_grad(), autocast_context(precision, device):
                tokens.append(encoder(batch["image"].to(device, non_blocking=True)).float())
    return tokens


def _resolve_encoders(cfg: TrainConfig, dataset, encoders, device) -> tuple[list, list]:
    """Encoders and token-cache keys (None where the cache is not valid) for each configured encoder."""
    if cfg.objective.proj_coeff == 0 and not cfg.objective.align_stop_step:
        return [], []
    grid = cfg.model.grid_size
    keys = [dataset.token_cache_key(name, dataset.resolution, grid)
            if cfg.data.use_token_cache and hasattr(dataset, "token_cache_key") else None
            for name in cfg.encoders]
    if encoders is None:
        from repa.encoders import load_encoder
        weights = cfg.encoder_weights or (None,) * len(cfg.encoders)
        encoders = [None if key is not None else
                    load_encoder(name, resolution=dataset.resolution, token_grid=grid, weights=w or None,
                                 device=device)
                    for name, key, w in zip(cfg.encoders, keys, weights)]
    if len(encoders) != len(cfg.encoders):
        raise ConfigError(f"{len(encoders)} encoder objects given for {len(cfg.encoders)} configured encoders")
    encoders = [e.to(device) if isinstance(e, torch.nn.Module) else e for e in encoders]
    if cfg.compile:
        encoders = [torch.compile(e) if e is not None else None for e in encoders]
    return list(encoders), keys


def _checkpoint_state(cfg, model, ema, opt, scaler, step, images_seen, loader, fsdp: bool) -> dict:
    """The complete training state; with FSDP the shards are gathered (a collective on every rank)."""
    rng = D.all_gather_object(torch.get_rng_state())
    net = D.unwrap(model)
    weights = ({"model": D.full_model_state(net), "ema": D.full_model_state(ema),
                "opt": D.full_optimizer_state(net, opt)} if fsdp else
               {"model": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict()})
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "config": to_json(cfg), **weights,
        "scaler": scaler.state_dict() if scaler is not None else {}, "steps": step, "images_seen": images_seen,
        "data": loader.state_dict(), "rng": rng, "versions": environment_versions(),
    }


def _open_dataset(cfg: TrainConfig, dataset):
    if dataset is not None:
        return dataset
    if not cfg.data.path:
        raise ConfigError("data.path: no dataset given; prepare one with `repa prepare` and pass --data.path DIR")
    from repa.data import open_dataset
    return open_dataset(cfg.data.path)


# ---- the training loop -------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, *, dataset=None, encoders=None, allow_config_change: bool = False,
          device: str | None = None, progress: bool = True, stop_at_step: int | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg`` while holding its run directory's lock (see ``_train``).

    One writer per run: a second process on the same ``run_dir`` is refused with the holder's pid; a first start
    that fails before its first checkpoint leaves no run directory behind.
    """
    rank = int(os.environ.get("RANK", 0))
    with claim_folder(cfg.run_dir, "run", enabled=rank == 0):
        return _train(cfg, dataset=dataset, encoders=encoders, allow_config_change=allow_config_change,
                      device=device, progress=progress, stop_at_step=stop_at_step)


def _train(cfg: TrainConfig, *, dataset=None, encoders=None, allow_config_change: bool = False,
           device: str | None = None, progress: bool = True, stop_at_step: int | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; returns when ``max_steps`` (or ``stop_at_step``) is reached.

    Args:
        cfg: the resolved config; validated here before any heavy work.
        dataset: an in-memory dataset (``repa.data.memory.ArrayDataset``) instead of ``cfg.data.path``.
        encoders: encoder objects (uint8 images -> (B, N, E)) instead of loading ``cfg.encoders`` by name.
        allow_config_change: resume even though non-resume-safe config fields differ from the saved run.
        device: default ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
        stop_at_step: stop early at this step (tests use it to simulate an interruption).
    """
    validate_train(cfg)
    dist = D.init(device)
    dev = dist.device
    if cfg.global_batch_size % (dist.world_size * cfg.grad_accum_steps):
        raise ConfigError(f"global_batch_size={cfg.global_batch_size} is not divisible by world size "
                          f"{dist.world_size} x grad_accum_steps {cfg.grad_accum_steps}")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    dataset = _open_dataset(cfg, dataset)
    check_dataset_for_model(cfg, dataset)          # against the manifest, before anything is built or written
    encoders, cache_keys = _resolve_encoders(cfg, dataset, encoders, dev)
    if dist.is_main:
        check_output_dir(cfg.run_dir, "run_dir")
    _check_run_dir(cfg, allow_config_change, dist.is_main)
    if dist.is_main:                               # half-written files of a killed writer of this run
        clean_stale_temp_files(cfg.run_dir)
        clean_stale_temp_files(Path(cfg.run_dir) / "checkpoints")

    # -- model, EMA, optimiser (identical init on every rank: seeded before building) --------------------------
    torch.manual_seed(cfg.seed)
    net = build_model(cfg.model).to(dev)
    if cfg.objective.proj_coeff == 0:
        net.projectors.requires_grad_(False)       # the vanilla twin keeps identical init but trains no projector
    net.gradient_checkpointing = cfg.activation_checkpointing
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    fsdp = cfg.parallel == "fsdp" and dist.world_size > 1
    if fsdp:                                       # EMA sharded like the model: its update is shard-local
        net, ema = D.shard(net), D.shard(ema)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps,
                            weight_decay=cfg.optim.weight_decay, fused=cfg.optim.fused or None)  # None: torch's default
    scaler = torch.amp.GradScaler(dev.type) if cfg.precision == "fp16" else None

    per_rank = cfg.global_batch_size // dist.world_size
    from repa.data.loader import BatchLoader
    keys = ["label", *(k for k in cache_keys if k is not None)]
    keys += ["latent_mean", "latent_std"] if cfg.model.space == "latent" else ["image"]
    if any(key is None for key in cache_keys) and "image" not in keys:
        keys.append("image")                       # a teacher runs live on the images
    loader = BatchLoader(dataset, per_rank, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size,
                         num_workers=cfg.data.num_workers, pin_memory=dev.type == "cuda", keys=keys)

    step, images_seen, last_ckpt = 0, 0, None
    found = latest_checkpoint(cfg.run_dir)
    if found is not None:
        state, last_ckpt = found
        if fsdp:
            D.load_full_model_state(net, state["model"])
            D.load_full_model_state(ema, state["ema"])
            D.load_full_optimizer_state(net, opt, state["opt"])
        else:
            net.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        loader.load_state_dict(state["data"])
        step, images_seen = int(state["steps"]), int(state["images_seen"])
        rng = state.get("rng") or []
        if len(rng) == dist.world_size:
            torch.set_rng_state(rng[dist.rank])
        if dist.is_main:
            print(f"resumed from step {step} (checkpoint {last_ckpt})", flush=True)
    model = net
    if dist.world_size > 1 and not fsdp:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)

    log = MetricsLog(cfg, enabled=dist.is_main, start_step=step, progress=progress)
    x_shape = (cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size)
    micro = per_rank // cfg.grad_accum_steps
    first_bad = torch.full((), -1, dtype=torch.long, device=dev)
    skipped = 0
    end = min(cfg.max_steps, stop_at_step) if stop_at_step is not None else cfg.max_steps
    ema_params, net_params = D.local_tensors(ema.parameters()), D.local_tensors(net.parameters())
    stop = GracefulStop().__enter__()              # Ctrl-C / SIGTERM: checkpoint at the end of the current step
    try:
        while step < end:
            # -- data and this step's randomness (global batch, then this rank's slice) --------------------------
            batch = next(loader)
            t_all, noise_all, uniforms, eps_all = _step_randomness(cfg, step, x_shape, cfg.model.space == "latent",
                                                                   dev)
            mine = slice(dist.rank * per_rank, (dist.rank + 1) * per_rank)
            labels = batch["label"].to(dev, non_blocking=True)      # pinned: no host sync
            labels = drop_labels(labels, uniforms[mine], cfg.model.class_dropout, cfg.model.null_class)
            x0 = _clean_inputs(batch, cfg.model.space, None if eps_all is None else eps_all[mine], dev)
            lam = lambda_at(cfg.objective, step)
            tokens = _teacher_tokens(batch, encoders, cache_keys, cfg.precision, dev) if lam > 0 else None
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg.optim, step)

            # -- forward/backward over micro-batches ------------------------------------------------------------
            loss_sum = torch.zeros((), device=dev)
            denoise_sum = torch.zeros((), device=dev)
            align_sum = torch.zeros((), device=dev)
            for k in range(cfg.grad_accum_steps):
                part = slice(k * micro, (k + 1) * micro)
                sync = k == cfg.grad_accum_steps - 1 or dist.world_size == 1
                if fsdp:
                    net.set_requires_gradient_sync(sync)
                ctx = contextlib.nullcontext() if sync or fsdp else model.no_sync()
                with ctx, autocast_context(cfg.precision, dev):
                    out = repa_loss(model, x0[part], labels[part],
                                    [tok[part] for tok in tokens] if tokens else None, cfg.objective,
                                    proj_coeff=lam, t=t_all[mine][part], noise=noise_all[mine][part])
                    loss = out.total / cfg.grad_accum_steps
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                loss_sum += out.total.detach() / cfg.grad_accum_steps
                denoise_sum += out.denoise / cfg.grad_accum_steps
                align_sum += out.align / cfg.grad_accum_steps

            # -- optimiser step, clipping, non-finite guard, EMA ------------------------------------------------
            if scaler is not None:
                scaler.unscale_(opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf"))
            bad = ~torch.isfinite(loss_sum) if scaler is not None else ~(torch.isfinite(loss_sum)
                                                                          & torch.isfinite(grad_norm))
            if cfg.max_skipped_steps > 0 and bool(bad):
                skipped += 1
                if skipped > cfg.max_skipped_steps:
                    raise NonFiniteError(step, "more than max_skipped_steps non-finite steps")
                opt.zero_grad(set_to_none=True)
                step += 1
                continue
            first_bad = torch.where((first_bad < 0) & bad, torch.full_like(first_bad, step), first_bad)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, net_params, 1.0 - cfg.ema_decay)
            step += 1
            images_seen += cfg.global_batch_size

            # -- logging, checkpoints, previews (host syncs happen only here) ------------------------------------
            log.accumulate(loss_sum, denoise_sum, align_sum, grad_norm)
            stop_signal = stop.check(step, cfg.log_every, dist.world_size, dev)
            at_ckpt = step % cfg.ckpt_every == 0 or step == end or bool(stop_signal)
            if step % cfg.log_every == 0 or at_ckpt:
                if int(first_bad) >= 0:
                    raise NonFiniteError(int(first_bad), "loss or gradient norm is not finite")
                log.write(step, images_seen, lr=opt.param_groups[0]["lr"], lam=lam)
            if at_ckpt:
                state = _checkpoint_state(cfg, model, ema, opt, scaler, step, images_seen, loader, fsdp)
                if dist.is_main:
                    last_ckpt = checkpoint_path(cfg.run_dir, step)
                    atomic_torch_save(state, last_ckpt)
                    prune_checkpoints(cfg.run_dir, cfg.keep_last, cfg.milestone_every)
                D.barrier()
            if stop_signal:
                raise Interrupted(stop_signal, step, last_ckpt)
            if cfg.sample_every and step % cfg.sample_every == 0 and dist.is_main:
                sample_preview(ema, cfg, step)
    except NonFiniteError as exc:
        log.close()
        loader.close()
        raise NonFiniteError(exc.step, f"{exc.reason}; the last good checkpoint is {last_ckpt}. Likely causes: a "
                             "learning rate too high for this batch size, fp16 overflow (try precision=bf16), or "
                             "corrupt input data") from None
    finally:
        stop.__exit__(None, None, None)
        log.close()                                # before any error message: the progress bar ends its line
        loader.close()
    log.close()
    loader.close()
    return TrainResult(step, last_ckpt, log.last)

