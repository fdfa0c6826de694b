"""Typed, frozen configuration: one resolved config per run, saved with every checkpoint.

Every field is validated once (``validate``) before any heavy work. ``to_dict``/``from_dict`` give a JSON
round trip that rejects unknown fields and wrong types with a message naming the field.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from repa.e2e_config import EndToEndConfig
from repa.fields import INT_LIMIT, ConfigError, _require, check_fields  # noqa: F401 (re-exported)
from repa.logging_config import WandbConfig
from repa.paths import PATHS as INTERPOLANTS


# ----------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the denoiser (SiT or DiT) and its REPA projectors.

    ``name`` is the paper's preset name (``SiT-XL/2``); the size fields are filled from the preset by
    ``repa.models.model_config`` and may be overridden for tiny test configs.
    """
    name: str = "SiT-B/2"            # the paper's model name (SiT-XL/2, DiT-B/2, ...): family, size, patch
    depth: int = 12                   # number of transformer blocks
    hidden_size: int = 768            # token width D
    num_heads: int = 12               # attention heads (hidden_size must be divisible by it)
    patch_size: int = 2               # side of the square patches that become tokens
    input_size: int = 32              # latent (or pixel) side length
    in_channels: int = 4              # channels of the latents (4 for the SD-VAE) or of the pixels
    num_classes: int = 1000           # class labels 0..num_classes-1; 0: an unconditional model (no label input)
    class_dropout: float = 0.1        # > 0 adds the null class (index num_classes) for guidance
    encoder_depth: int = 8            # 1-based block whose output the projectors read
    encoder_dims: tuple[int, ...] = (768,)   # one projector per encoder, output width E
    projector_dim: int = 2048         # hidden width of the projector MLP
    # "mlp" (REPA: 3 Linear layers), "conv" (iREPA: a k x k convolution on the token grid) or "sra" (SRA's head:
    # Linear(D, D+E) - SiLU - Linear(D+E, E), vvvvvjdy/SRA's ap_head; 2D wide for its E = D)
    projector: Literal["mlp", "conv", "sra"] = "mlp"
    projector_kernel: int = 3         # kernel side of the conv projector (odd)
    mlp_ratio: float = 4.0            # width of the blocks' MLP relative to hidden_size
    qk_norm: bool = False             # normalise queries and keys (LayerNorm) in attention
    learn_sigma: bool = False         # DiT with the improved-DDPM objective predicts 2C channels
    space: Literal["latent", "pixel"] = "latent"  # "latent" (SD-VAE latents, decoded for viewing) or "pixel" (in [-1, 1])
    prediction: Literal["velocity", "epsilon"] = "velocity"  # what forward returns: "velocity" (interpolant) or "epsilon" (DDPM noise)
    # The network's own time: "data_at_0" (REPA: t = 0 data, t = 1 noise; a DiT reads t = timestep / 1000) or
    # "noise_at_0" (released willisma/SiT weights; repa.models.released converts them to data_at_0 at every call).
    time_convention: Literal["data_at_0", "noise_at_0"] = "data_at_0"
    # REG (Wu et al. 2025): one extra token, the teacher's class token, denoised jointly with the image tokens.
    # Its width is that of the (single) encoder, encoder_dims[0], as in the reference code.
    class_token: bool = False         # REG: denoise the teacher's class token with the image tokens

    @property
    def class_token_dim(self) -> int:
        """Width E of REG's extra token (0 without one)."""
        return self.encoder_dims[0] if self.class_token and self.encoder_dims else 0

    @property
    def family(self) -> str:
        return self.name.split("-", 1)[0]

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size ** 2

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def null_class(self) -> int:
        return self.num_classes


@dataclass(frozen=True)
class ObjectiveConfig:
    """Denoising objective (``repa.objectives``) and the REPA term (Yu et al. 2025, Eq. 8)."""
    # a key of repa.objectives.OBJECTIVES: "interpolant" (SiT, velocity) or "iddpm" (DiT, epsilon + learned sigma)
    kind: str = "interpolant"
    path: Literal["linear", "cosine"] = "linear"  # interpolant: x_t = alpha_t x + sigma_t noise
    time_sampling: Literal["uniform", "lognormal"] = "uniform"  # distribution of the training times t
    proj_coeff: float = 0.5           # lambda; 0 gives the vanilla model
    align_stop_step: int = 0          # > 0: the alignment term is off from this step on (HASTE-style)
    align_decay_steps: int = 0        # > 0: lambda decays linearly to 0 over this many steps before the stop
    # What the projected tokens are aligned with: "encoders" (the frozen teachers: REPA, iREPA, HASTE) or "self"
    # (SRA: a later block of the model's own EMA at lower noise; no teacher, ``encoders`` empty).
    target: Literal["encoders", "self"] = "encoders"
    target_norm: Literal["none", "spatial"] = "none"  # "none" or "spatial" (iREPA: (y - gamma * mean_tokens y) / std_tokens y)
    target_norm_gamma: float = 0.6    # gamma of the spatial normalisation (iREPA's SiT code: 0.6; JiT: 0.8)
    attn_coeff: float = 0.0           # HASTE: weight of the attention-map alignment (0: off)
    attn_layers: tuple[int, ...] = ()          # HASTE: 1-based model blocks whose attention maps are aligned...
    attn_teacher_layers: tuple[int, ...] = ()  # ...with these 1-based teacher blocks (pairwise)
    self_depth: int = 0               # SRA: 1-based EMA block giving the targets (> model.encoder_depth)
    self_time_gap: float = 0.2        # SRA: the EMA sees t - gap * U(0, 1), clamped to [0, 1]
    # SRA's alignment loss (vvvvvjdy/SRA loss.py): "smooth_l1" (smooth-L1, beta 0.05, mean over tokens and channels,
    # weighted proj_coeff * 0.1 ** f(epoch): the paper's loss and that of the released FID-1.58 checkpoint) or
    # "cosine" (1 - cosine over the tokens, per channel, averaged; the code's later default, weight proj_coeff,
    # no schedule)
    self_loss: Literal["smooth_l1", "cosine"] = "smooth_l1"
    self_epoch_steps: int = 5004      # SRA smooth_l1: optimizer steps per epoch of the schedule (ImageNet: 1281167 // 256)
    self_decay_start: int = 149       # SRA smooth_l1: weight proj_coeff * 0.1 through this epoch (the code: 149 at 256 px, 99 at 512)
    self_decay_epochs: int = 1000     # ...then proj_coeff * 0.1 ** (1 + (epoch - start) / this) (1000 at 256 px, 800 at 512)
    class_token_coeff: float = 0.03   # REG (model.class_token): weight of the class token's velocity loss


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with the paper's defaults."""
    lr: float = 1e-4                  # learning rate (constant after the warmup)
    beta1: float = 0.9                # AdamW beta1
    beta2: float = 0.999              # AdamW beta2
    eps: float = 1e-8                 # AdamW epsilon
    weight_decay: float = 0.0         # AdamW decoupled weight decay
    grad_clip: float = 1.0            # 0 disables clipping
    warmup_steps: int = 0             # linear learning-rate warmup from 0 over this many steps
    fused: bool = True                # one fused AdamW kernel (CPU and CUDA): the same update, 4x less time


@dataclass(frozen=True)
class DataConfig:
    """Where the training data comes from."""
    path: str = ""                    # prepared dataset directory ("" only for in-memory data)
    resolution: int = 256             # image side length the encoders see
    num_workers: int = 2              # data-loading threads per rank (prefetching batches)
    use_token_cache: bool = True      # read the teachers' tokens from the dataset's cache when it has one


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved as ``config.json`` and inside every checkpoint."""
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    e2e: EndToEndConfig = field(default_factory=EndToEndConfig)  # REPA-E (objective.kind=repa-e): repa/e2e_config.py
    encoders: tuple[str, ...] = ("dinov2-vit-b",)  # frozen teachers (see `repa encoders`); empty: none
    encoder_weights: tuple[str, ...] = ()   # optional local paths, one per encoder
    run_dir: str = "runs/default"     # where checkpoints, config.json, metrics and previews go (reruns resume)
    seed: int = 0                     # seeds initial weights, data order and noise
    global_batch_size: int = 256      # images per optimizer step, all ranks and micro-batches together
    grad_accum_steps: int = 1         # micro-batches per step (same result, less memory)
    max_steps: int = 400_000          # optimizer steps of the whole run
    ema_decay: float = 0.9999         # decay of the EMA weights (what sampling uses)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast precision of the forward/backward
    tf32: bool = True                 # allow TF32 matmuls on CUDA
    compile: bool = False             # torch.compile the model (and the teacher)
    activation_checkpointing: bool = False  # recompute block activations in the backward (less memory)
    parallel: Literal["ddp", "fsdp"] = "ddp"  # ddp | fsdp (shards parameters, gradients and optimizer state across ranks)
    log_every: int = 100              # steps between metric lines (metrics.jsonl, TensorBoard, W&B)
    ckpt_every: int = 10_000          # steps between checkpoints
    keep_last: int = 3                # checkpoints kept (older ones are deleted, milestones excepted)
    milestone_every: int = 0          # > 0: checkpoints at multiples of this are never deleted
    sample_every: int = 0             # > 0: EMA sample grids (PNG) at this interval
    sample_steps: int = 50            # sampler steps of those previews (the default sampler of SampleConfig)
    sample_vae: str = "stabilityai/sd-vae-ft-ema"  # hub id or folder of the VAE decoding latent previews
    max_skipped_steps: int = 0        # > 0: skip up to this many non-finite steps instead of stopping
    wandb: bool = False               # also log to Weights & Biases (pip install wandb)
    wandb_run: WandbConfig = field(default_factory=WandbConfig)  # W&B project, entity, run name, tags, images
    tensorboard: bool = True          # also log to TensorBoard (run_dir/tensorboard)


@dataclass(frozen=True)
class SampleConfig:
    """How samples are drawn: one set of defaults for ``repa sample``, ``repa sample-grid``, ``repa.sample``,
    ``repa.generate_images`` and training previews.

    The defaults are the papers' evaluation samplers (SiT/REPA: Euler-Maruyama SDE, DiT: DDPM, 250 steps each)
    without guidance, which every model supports. REPA's best FID (1.42 for SiT-XL/2) adds ``cfg_scale=1.8`` with
    ``guidance_high=0.7``; guidance needs a model trained with class dropout (``model.class_dropout > 0``).
    """
    sampler: Literal["auto", "euler", "heun", "sde", "ddpm"] = "auto"  # auto: sde for velocity nets, ddpm for epsilon (DiT)
    steps: int = 250                  # grid steps (model evaluations: euler/sde/ddpm steps, heun 2 steps - 1)
    cfg_scale: float = 1.0            # classifier-free guidance scale (1: no guidance)
    guidance_low: float = 0.0         # guidance only for times t >= guidance_low (0 data, 1 noise)
    guidance_high: float = 1.0        # ...and t <= guidance_high (REPA's best FID: 0.7)
    # guide "all" data channels or the first K (default: the family's reference: 3 for DiT and released SiT
    # checkpoints, all for REPA's SiT)
    guided_channels: Optional[Union[int, Literal["all"]]] = None
    # REG networks only: the class token's guidance scale (Martinser/REG's --cls-cfg-scale; default: cfg_scale, as
    # its generate.py defaults and eval.sh set both equal); 0: the class token is not guided (conditional only). It
    # applies where the image is guided (cfg_scale != 1, inside the interval)
    cls_cfg_scale: Optional[float] = None

    @property
    def guidance_interval(self) -> tuple[float, float]:
        return (self.guidance_low, self.guidance_high)


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------

PATHS = tuple(INTERPOLANTS)
PROJECTORS = ("mlp", "conv", "sra")
SELF_LOSSES = ("smooth_l1", "cosine")
ALIGN_TARGETS = ("encoders", "self")
TARGET_NORMS = ("none", "spatial")
TIME_SAMPLINGS = ("uniform", "lognormal")
PRECISIONS = ("fp32", "bf16", "fp16")
PREDICTIONS = ("velocity", "epsilon")   # what a network predicts; objectives and samplers declare theirs
TIME_CONVENTIONS = ("data_at_0", "noise_at_0")


MAX_CLASSES = 1_000_000                # a label table beyond this is a typo (ImageNet-21k has 21841 classes)
MAX_PARAMETERS = 10 ** 11             # a network beyond this cannot be built (SiT-XL/2 has 675M)


def _parameters(m: ModelConfig) -> float:
    """A rough parameter count of the network ``m`` describes (blocks, label table, projectors)."""
    d = m.hidden_size
    blocks = m.depth * d * d * (4 + 2 * m.mlp_ratio + 6)       # attention, MLP, adaLN
    return blocks + (m.num_classes + 1) * d + sum((d + 2 * m.projector_dim) * m.projector_dim + m.projector_dim * e
                                                  for e in m.encoder_dims)


def validate_model(m: ModelConfig) -> None:
    """Raise ConfigError for an inconsistent model section."""
    check_fields(m, "model.")
    _require(m.family in ("SiT", "DiT"), "model.name", f"must be a SiT-... or DiT-... name, got {m.name!r}")
    _require(m.depth >= 1, "model.depth", f"must be >= 1, got {m.depth}")
    _require(m.hidden_size >= 1, "model.hidden_size", f"must be >= 1, got {m.hidden_size}")
    _require(m.num_heads >= 1, "model.num_heads", f"must be >= 1, got {m.num_heads}")
    _require(m.in_channels >= 1, "model.in_channels", f"must be >= 1, got {m.in_channels}")
    _require(m.input_size >= 1, "model.input_size", f"must be >= 1, got {m.input_size}")
    _require(m.mlp_ratio > 0, "model.mlp_ratio", f"must be > 0, got {m.mlp_ratio}")
    _require(m.projector_dim >= 1, "model.projector_dim", f"must be >= 1, got {m.projector_dim}")
    _require(m.num_classes <= MAX_CLASSES, "model.num_classes", f"must be at most {MAX_CLASSES}, got {m.num_classes}")
    _require(m.hidden_size % m.num_heads == 0, "model.hidden_size",
             f"{m.hidden_size} is not divisible by model.num_heads={m.num_heads}")
    _require(m.hidden_size % 4 == 0, "model.hidden_size",
             f"must be a multiple of 4 (the 2D sin-cos position embedding), got {m.hidden_size}")
    _require(int(m.hidden_size * m.mlp_ratio) >= 1, "model.mlp_ratio",
             f"gives an MLP of width 0 (model.hidden_size={m.hidden_size} x {m.mlp_ratio})")
    _require(_parameters(m) <= MAX_PARAMETERS, "model", f"{m.name} with these sizes would have about "
             f"{_parameters(m):.3g} parameters (more than {MAX_PARAMETERS:.0e}); check the size fields")
    _require(m.patch_size >= 1, "model.patch_size", f"must be >= 1, got {m.patch_size}")
    _require(m.input_size % m.patch_size == 0, "model.input_size",
             f"{m.input_size} is not divisible by the patch size {m.patch_size}; use an input size that is a "
             f"multiple of {m.patch_size}")
    _require(1 <= m.encoder_depth <= m.depth, "model.encoder_depth",
             f"must be in 1..{m.depth} (the model depth), got {m.encoder_depth}")
    _require(0.0 <= m.class_dropout < 1.0, "model.class_dropout", f"must be in [0, 1), got {m.class_dropout}")
    _require(m.num_classes >= 0, "model.num_classes", f"must be >= 0 (0: unconditional), got {m.num_classes}")
    _require(m.num_classes > 0 or m.class_dropout == 0, "model.class_dropout",
             f"an unconditional model (model.num_classes=0) has no label to drop: set model.class_dropout=0 "
             f"(got {m.class_dropout})")
    _require(all(e >= 1 for e in m.encoder_dims), "model.encoder_dims", f"must be positive, got {m.encoder_dims}")
    _require(m.time_convention == "data_at_0" or (m.family == "SiT" and m.prediction == "velocity"),
             "model.time_convention", f"{m.time_convention!r} is willisma/SiT's convention: a SiT velocity network "
             f"(got {m.name}, prediction {m.prediction!r})")
    _require(m.projector_kernel >= 1 and m.projector_kernel % 2 == 1, "model.projector_kernel",
             f"must be an odd positive integer (the conv keeps the token grid), got {m.projector_kernel}")
    if m.class_token:
        _require(m.family == "SiT" and m.prediction == "velocity" and m.time_convention == "data_at_0",
                 "model.class_token", f"REG's class token is a SiT velocity-network option (got {m.name}, "
                 f"prediction {m.prediction!r}, time_convention {m.time_convention!r})")
        _require(len(m.encoder_dims) == 1, "model.class_token", "REG's class token comes from one teacher: give "
                 f"exactly one model.encoder_dims entry (its width), got {m.encoder_dims}")
        _require(m.projector == "mlp", "model.class_token", "REG projects the class token with the image tokens, "
                 "token by token: use model.projector=mlp (the conv projector needs a square token grid)")


def validate_objective(o: ObjectiveConfig) -> None:
    # the objective itself (repa.objectives.check_objective) checks that it exists and fits the model
    _require(isinstance(o.kind, str) and bool(o.kind), "objective.kind", f"must name an objective, got {o.kind!r}")
    _require(o.path in PATHS, "objective.path", f"must be one of {PATHS}, got {o.path!r}")
    _require(o.time_sampling in TIME_SAMPLINGS, "objective.time_sampling",
             f"must be one of {TIME_SAMPLINGS}, got {o.time_sampling!r}")
    _require(o.proj_coeff >= 0, "objective.proj_coeff", f"must be >= 0, got {o.proj_coeff}")
    _require(o.align_stop_step >= 0 and o.align_decay_steps >= 0, "objective.align_stop_step",
             "align_stop_step and align_decay_steps must be >= 0")
    _require(o.align_decay_steps == 0 or o.align_stop_step > 0, "objective.align_decay_steps",
             "a decay needs objective.align_stop_step > 0 (the step where lambda reaches 0)")
    _require(o.target in ALIGN_TARGETS, "objective.target", f"must be one of {ALIGN_TARGETS}, got {o.target!r}")
    _require(o.target_norm in TARGET_NORMS, "objective.target_norm",
             f"must be one of {TARGET_NORMS}, got {o.target_norm!r}")
    _require(0.0 <= o.target_norm_gamma <= 1.0, "objective.target_norm_gamma",
             f"must be in [0, 1] (the share of the token mean removed), got {o.target_norm_gamma}")
    _require(o.attn_coeff >= 0, "objective.attn_coeff", f"must be >= 0, got {o.attn_coeff}")
    if o.attn_coeff > 0:
        _require(o.target == "encoders", "objective.attn_coeff",
                 "attention alignment (HASTE) needs a teacher encoder; it cannot run with objective.target='self'")
        _require(len(o.attn_layers) >= 1 and len(o.attn_layers) == len(o.attn_teacher_layers),
                 "objective.attn_layers", "HASTE needs as many model blocks (objective.attn_layers) as teacher "
                 f"blocks (objective.attn_teacher_layers), at least one; got {o.attn_layers} and "
                 f"{o.attn_teacher_layers} (the reference: 5,6,7,8 with 9,10,11,12)")
        _require(all(i >= 1 for i in o.attn_layers + o.attn_teacher_layers), "objective.attn_layers",
                 "block indices are 1-based; got 0 or a negative index")
    if o.target == "self":
        _require(o.proj_coeff > 0, "objective.proj_coeff", "self-alignment (objective.target='self') needs "
                 "objective.proj_coeff > 0 (the SRA weight; the reference uses 0.5)")
        _require(0.0 <= o.self_time_gap <= 1.0, "objective.self_time_gap",
                 f"must be in [0, 1], got {o.self_time_gap}")
        _require(o.self_loss in SELF_LOSSES, "objective.self_loss",
                 f"must be one of {SELF_LOSSES}, got {o.self_loss!r}")
        _require(o.self_epoch_steps >= 1, "objective.self_epoch_steps",
                 f"must be >= 1 (optimizer steps per epoch of SRA's weight schedule), got {o.self_epoch_steps}")
        _require(o.self_decay_start >= 0 and o.self_decay_epochs >= 1, "objective.self_decay_start",
                 "self_decay_start must be >= 0 and self_decay_epochs >= 1 (the reference: 149 and 1000 at 256 px), "
                 f"got {o.self_decay_start} and {o.self_decay_epochs}")
    _require(o.class_token_coeff >= 0, "objective.class_token_coeff", f"must be >= 0, got {o.class_token_coeff}")


def validate_train(c: TrainConfig) -> None:
    """Validate every section of a training config; raises ConfigError naming the field."""
    _require(isinstance(c, TrainConfig), "config", f"must be a repa.TrainConfig, got {type(c).__name__}")
    check_fields(c)
    validate_model(c.model)
    validate_objective(c.objective)
    _require(c.global_batch_size >= 1, "global_batch_size", f"must be >= 1, got {c.global_batch_size}")
    _require(c.grad_accum_steps >= 1, "grad_accum_steps", f"must be >= 1, got {c.grad_accum_steps}")
    _require(c.global_batch_size % c.grad_accum_steps == 0, "grad_accum_steps",
             f"global_batch_size={c.global_batch_size} is not divisible by grad_accum_steps={c.grad_accum_steps}")
    _require(c.max_steps >= 1, "max_steps", f"must be >= 1, got {c.max_steps}")
    _require(0.0 <= c.ema_decay < 1.0, "ema_decay", f"must be in [0, 1), got {c.ema_decay}")
    _require(c.optim.lr > 0, "optim.lr", f"must be > 0, got {c.optim.lr}")
    _require(c.optim.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 disables), got {c.optim.grad_clip}")
    _require(c.optim.eps > 0, "optim.eps", f"must be > 0, got {c.optim.eps}")
    for name in ("beta1", "beta2"):
        value = getattr(c.optim, name)
        _require(0 <= value < 1, f"optim.{name}", f"must be in [0, 1), got {value}")
    _require(bool(c.run_dir.strip()), "run_dir", "must name a folder, got an empty string")
    _require(c.sample_steps >= 1, "sample_steps", f"must be >= 1, got {c.sample_steps}")
    _require(all(bool(e.strip()) for e in c.encoders), "encoders", f"an empty encoder name in {list(c.encoders)}")
    _require(c.log_every >= 1 and c.ckpt_every >= 1, "log_every", "log_every and ckpt_every must be >= 1")
    _require(c.keep_last >= 1, "keep_last", f"must be >= 1, got {c.keep_last}")
    o, m = c.objective, c.model
    if o.target == "self":
        _require(not c.encoders, "encoders", f"self-alignment (objective.target='self', SRA) uses no teacher; set "
                 f"encoders to an empty list (got {list(c.encoders)})")
        _require(m.encoder_dims == (m.hidden_size,), "model.encoder_dims",
                 f"self-alignment projects to the model's own width: set model.encoder_dims={m.hidden_size} "
                 f"(got {m.encoder_dims})")
        _require(m.encoder_depth < o.self_depth <= m.depth, "objective.self_depth",
                 f"the EMA block that gives the targets must be deeper than model.encoder_depth={m.encoder_depth} "
                 f"and at most model.depth={m.depth}; got {o.self_depth} (the reference: 8 -> 20 for SiT-XL/2)")
    elif o.proj_coeff > 0 or o.attn_coeff > 0:
        _require(len(c.encoders) >= 1, "encoders", "REPA (objective.proj_coeff > 0) needs at least one encoder")
        _require(len(c.encoders) == len(m.encoder_dims), "model.encoder_dims",
                 f"has {len(m.encoder_dims)} entries but {len(c.encoders)} encoders are configured")
    if o.attn_coeff > 0:
        _require(max(o.attn_layers) <= m.depth, "objective.attn_layers",
                 f"model blocks {o.attn_layers} outside 1..{m.depth} (the model depth)")
        _require(len(c.encoders) == 1, "encoders", "attention alignment (HASTE) reads one teacher's attention "
                 f"maps; configure exactly one encoder (got {list(c.encoders)})")
    if m.class_token:
        _require(o.target == "encoders", "model.class_token", "REG's extra token is a teacher's class token; "
                 "self-alignment (objective.target='self') has no teacher")
        _require(len(c.encoders) == 1, "encoders", "REG (model.class_token) takes the class token of exactly one "
                 f"teacher; configure one encoder (got {list(c.encoders)})")
        _require(o.attn_coeff == 0, "objective.attn_coeff", "HASTE's attention maps are not defined for REG's "
                 "extra token; set objective.attn_coeff=0 or model.class_token=false")
        _require(o.target_norm == "none", "objective.target_norm", "iREPA's spatial normalisation is not defined "
                 "for REG's class token; set objective.target_norm=none or model.class_token=false")
    _require(not c.encoder_weights or len(c.encoder_weights) == len(c.encoders), "encoder_weights",
             "give one path per encoder, or none")


# ----------------------------------------------------------------------------------------------------------------
# Serialisation (JSON round trip with type checks)
# ----------------------------------------------------------------------------------------------------------------

def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=False)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=name + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, name) for v in value)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            raise ConfigError(f"{name}: must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        for arm in arms[:-1]:
            try:
                return _coerce(value, arm, name)
            except ConfigError:
                continue
        return _coerce(value, arms[-1], name)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build config dataclass ``cls`` from a dict; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config field(s) {[prefix + u for u in unknown]}; known: "
                          f"{sorted(prefix + n for n in names)}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def train_config_from_dict(data: dict) -> TrainConfig:
    """A TrainConfig from its JSON dict (``config.json``, a checkpoint), including configs written before the
    prediction moved from ``objective.prediction`` to ``model.prediction``."""
    data = json.loads(json.dumps(data))
    objective, model = data.get("objective", {}), data.get("model", {})
    if isinstance(objective, dict) and "prediction" in objective:
        prediction = objective.pop("prediction")
        if isinstance(model, dict):
            model.setdefault("prediction", prediction)
    return from_dict(TrainConfig, data)


def field_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Flat map ``section.field`` -> type for every leaf field of a nested config dataclass."""
    out: dict[str, Any] = {}
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update(field_types(tp, prefix + name + "."))
        else:
            out[prefix + name] = tp
    return out


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return ``cfg`` with dotted-path overrides (``{"model.depth": 4}``) applied, checking each name."""
    known = field_types(type(cfg))
    for key in overrides:
        if key not in known:
            raise ConfigError(f"unknown config field {key!r}; known fields: {', '.join(sorted(known))}")
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            nested[head] = value
    changes = {}
    for head, value in nested.items():
        if isinstance(value, dict) and dataclasses.is_dataclass(getattr(cfg, head)):
            changes[head] = apply_overrides(getattr(cfg, head), value)
        else:
            changes[head] = value
    return dataclasses.replace(cfg, **changes)


def diff(a: Any, b: Any) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two configs of the same type: ``{"model.depth": (old, new)}``."""
    fa, fb = _flatten(to_dict(a)), _flatten(to_dict(b))
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out
