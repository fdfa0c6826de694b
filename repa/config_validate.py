"""Validation of the typed configs (``repa.config``): every field by its type (``repa.fields.check_fields``), then the
ranges and the fields that must agree. ``validate_train`` reports every problem of a config in one error."""
from __future__ import annotations

from repa.config import ModelConfig, ObjectiveConfig, TrainConfig
from repa.fields import ConfigError, _report, _require, check_fields, collect
from repa.model_names import name_of, parse_name
from repa.paths import PATHS as INTERPOLANTS

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
    """Raise ConfigError for an inconsistent model section (every field in error at once)."""
    collect(lambda: _model_checks(m))


def _model_checks(m: ModelConfig) -> None:
    check_fields(m, "model.")
    try:
        parse_name(m.name)
    except ConfigError as exc:
        _report(str(exc))
    _require(m.depth >= 1, "model.depth", f"must be >= 1, got {m.depth}")
    _require(m.hidden_size >= 1, "model.hidden_size", f"must be >= 1, got {m.hidden_size}")
    _require(m.num_heads >= 1, "model.num_heads", f"must be >= 1, got {m.num_heads}")
    _require(m.in_channels >= 1, "model.in_channels", f"must be >= 1, got {m.in_channels}")
    _require(m.input_size >= 1, "model.input_size", f"must be >= 1, got {m.input_size}")
    _require(m.mlp_ratio > 0, "model.mlp_ratio", f"must be > 0, got {m.mlp_ratio}")
    _require(m.projector_dim >= 1, "model.projector_dim", f"must be >= 1, got {m.projector_dim}")
    _require(m.context_dim >= 1, "model.context_dim", f"must be >= 1, got {m.context_dim}")
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
    _require(m.family != "MMDiT" or (m.num_classes == 0 and m.prediction == "velocity" and not m.learn_sigma
                                     and not m.class_token), "model.name", "an MMDiT is text-conditioned velocity "
             "network: model.num_classes=0, prediction velocity, no learn_sigma or class_token")
    _require(m.num_classes > 0 or m.class_dropout == 0 or m.family == "MMDiT", "model.class_dropout",
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
    """Validate every section of a training config; one ConfigError names every field in error, each with its first
    problem (its type, then its range, then its agreement with the others), ``; ``-joined."""
    if not isinstance(c, TrainConfig):
        raise ConfigError(f"config: must be a repa.TrainConfig, got {type(c).__name__}")
    collect(lambda: check_fields(c), lambda: validate_model(c.model), lambda: validate_objective(c.objective),
            lambda: _validate_run(c))


def _known(name: str) -> bool:
    try:
        return bool(parse_name(name))
    except ConfigError:
        return False


def _validate_run(c: TrainConfig) -> None:
    m = c.model
    _require(not _known(m.name) or m.name == name_of(m), "model.name",
             f"{m.name!r} does not say what the model is (depth {m.depth}, width "
             f"{m.hidden_size}, patch {m.patch_size}): name it {name_of(m)!r}, or drop the size fields and let the "
             "name set them (repa.model_config names size overrides so)")
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
