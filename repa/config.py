"""Typed, frozen configuration: one resolved config per run, saved with every checkpoint.

Every field is validated once (``repa.config_validate``) before any heavy work. ``to_dict``/``from_dict`` give a JSON
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
from repa.model_names import name_of


# ----------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the denoiser (SiT or DiT) and its REPA projectors.

    ``name`` says what the network is (``SiT-XL/2``, ``SiT-6x128/1``: ``repa.model_names``); the size fields are
    filled from it by ``repa.models.model_config``, and overriding them renames the model.
    """
    # the model: the papers' SiT-XL/2, DiT-B/2, ... or a custom SiT-<depth>x<width>/<patch>; it sets the size, the
    # patch and what the family predicts (a DiT: epsilon with learned variance, objective.kind iddpm)
    name: str = "SiT-B/2"
    depth: int = 12                   # number of transformer blocks
    hidden_size: int = 768            # token width D
    num_heads: int = 12               # attention heads (hidden_size must be divisible by it)
    patch_size: int = 2               # side of the square patches that become tokens
    input_size: int = 32              # latent (or pixel) side length
    in_channels: int = 4              # channels of the latents (4 for the SD-VAE) or of the pixels
    num_classes: int = 1000           # class labels 0..num_classes-1; 0: an unconditional (or MMDiT: text) model
    class_dropout: float = 0.1        # > 0 adds the null class (index num_classes) for guidance; MMDiT: caption dropout
    context_dim: int = 768            # MMDiT: width of the text encoder's tokens (CLIP ViT-L/14: 768)
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
    path: str = ""                    # dataset folder: prepared, or the reference's (docs/DATA.md); "" in memory
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
    prediction moved from ``objective.prediction`` to ``model.prediction``, and before a model was named for its
    size (``SiT-B/2`` with 6 blocks loads as ``SiT-6x768/2``: the same network, named for what it is)."""
    cfg = from_dict(TrainConfig, upgrade(data))
    try:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=name_of(cfg.model)))
    except (ConfigError, TypeError):
        return cfg                       # a name that does not parse: validation reports it


def upgrade(data: dict) -> dict:
    """A copy of a training config's (possibly partial) dict in today's layout: ``objective.prediction`` (configs
    written before it moved) becomes ``model.prediction``."""
    data = json.loads(json.dumps(data))
    objective, model = data.get("objective", {}), data.get("model", {})
    if isinstance(objective, dict) and "prediction" in objective:
        prediction = objective.pop("prediction")
        if isinstance(model, dict):
            model.setdefault("prediction", prediction)
        elif "model" not in data:
            data["model"] = {"prediction": prediction}
    return data


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
