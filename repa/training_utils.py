"""Small helpers of the training loop: schedules, precision contexts, metrics logging, previews."""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch

from repa.config import OptimConfig, TrainConfig


class NonFiniteError(RuntimeError):
    """The loss or the gradient became NaN/inf; ``step`` is the first bad step, ``checkpoint`` the last good one."""

    def __init__(self, step: int, reason: str, checkpoint=None):
        super().__init__(f"non-finite training at step {step}: {reason}")
        self.step, self.reason, self.checkpoint = step, reason, checkpoint


def lr_at(optim: OptimConfig, step: int) -> float:
    """Constant learning rate after an optional linear warm-up over ``warmup_steps``."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    return optim.lr


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the records of ``metrics.jsonl`` up to ``step`` (the step a run resumes from), atomically."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):   # a line cut by a kill: drop it
            continue
        if record_step <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        from repa.utils import atomic_write_text
        atomic_write_text(path, "".join(kept))


class MetricsLog:
    """Accumulates losses on the device; writes metrics.jsonl, TensorBoard (and W&B) every ``log_every`` steps.

    ``write`` is a collective under torch.distributed (the values are averaged over the ranks); rank 0 writes.

    The progress bar shows steps/s, images/s and the ETA. Only ``write`` synchronises with the device.
    """

    def __init__(self, cfg: TrainConfig, *, enabled: bool, start_step: int, progress: bool):
        self.cfg, self.enabled = cfg, enabled
        self.sums: dict[str, torch.Tensor] | None = None
        self.count = 0
        self.last: dict = {}
        self.t0, self.step0 = time.perf_counter(), start_step
        self.bar = self.tb = self.wandb = None
        if not enabled:
            return
        self.path = Path(cfg.run_dir) / "metrics.jsonl"
        truncate_metrics(self.path, start_step)    # lines logged after the checkpoint we resume from go
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=cfg.max_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            desc=Path(cfg.run_dir).name)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(Path(cfg.run_dir) / "tensorboard"), purge_step=start_step + 1)
            except ImportError:
                warnings.warn("tensorboard is not installed; TensorBoard logging is off")
        if cfg.wandb:
            import wandb

            from repa.logging_config import wandb_init_kwargs
            self.wandb = wandb.init(**wandb_init_kwargs(cfg))

    def accumulate(self, values: dict[str, torch.Tensor]) -> None:
        """Add one step's named scalars (the loss, its terms, the gradient norm), kept on the device."""
        values = {k: torch.as_tensor(v).detach().float() for k, v in values.items()}
        if self.sums is None:
            self.sums = values
        else:
            for key, value in values.items():
                self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)

    def write(self, step: int, images_seen: int, **extra) -> None:
        if self.sums is None:
            return
        # every rank calls write: the logged values are the means over all ranks (each rank holds its share of
        # the global batch), as the reference reduces its logged loss
        names = sorted(self.sums)
        local = [self.sums[k].full_tensor() if hasattr(self.sums[k], "full_tensor") else self.sums[k]
                 for k in names]                  # FSDP: DTensor norms
        totals = torch.stack(local) / self.count
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(totals)
            totals /= torch.distributed.get_world_size()
        means = dict(zip(names, (float(v) for v in totals.cpu())))
        now = time.perf_counter()
        steps_per_s = (step - self.step0) / max(now - self.t0, 1e-9)
        record = {"step": step, "images_seen": images_seen, **means, "steps_per_s": steps_per_s,
                  "images_per_s": steps_per_s * self.cfg.global_batch_size, **extra}
        if torch.cuda.is_available():
            record["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        self.sums, self.count, self.t0, self.step0 = None, 0, now, step
        self.last = record
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.bar is not None:
            shown = {k: f"{record[k]:.4f}" for k in ("loss", "align_loss") if k in record}
            self.bar.set_postfix(**shown, img_s=f"{record['images_per_s']:.0f}")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step":
                    self.tb.add_scalar(f"train/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log(record, step=step)

    def image(self, key: str, path: Path, step: int) -> None:
        """Log a PNG file (a preview grid) to W&B when it is on and ``wandb_run.images``."""
        if self.wandb is not None and self.cfg.wandb_run.images:
            import wandb
            self.wandb.log({key: wandb.Image(str(path), caption=f"step {step}")}, step=step)

    def close(self) -> None:
        """Close the progress bar and the writers (idempotent)."""
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.bar = self.tb = self.wandb = None


_preview_warned = False


def sample_preview(ema, cfg: TrainConfig, step: int, log: MetricsLog | None = None) -> None:
    """Write a PNG grid of 16 EMA samples (``SampleConfig()`` with ``cfg.sample_steps`` steps, seed ``cfg.seed``)
    to ``run_dir/samples/STEP.png`` through the one in-process generator; latent models are decoded by
    ``cfg.sample_vae``, loaded once per process; ``log``: also to W&B (``MetricsLog.image``)."""
    global _preview_warned
    from repa.config import SampleConfig
    from repa.evaluation.generate import sample_grid_png
    vae = None
    if cfg.model.space == "latent":
        from repa.autoencoder import cached_vae
        try:
            vae = cached_vae(cfg.sample_vae, next(ema.parameters()).device)
        except Exception as exc:  # noqa: BLE001  previews are optional; training goes on
            if not _preview_warned:
                warnings.warn(f"sample previews are off: the VAE {cfg.sample_vae!r} could not be loaded ({exc})")
                _preview_warned = True
            return
    rng_state = torch.get_rng_state()
    path = Path(cfg.run_dir) / "samples" / f"{step:08d}.png"
    sample_grid_png(ema, path, SampleConfig(steps=cfg.sample_steps), num=16, seed=cfg.seed, vae=vae)
    torch.set_rng_state(rng_state)
    if log is not None:
        log.image("samples", path, step)
