"""The denoising objectives REPA is trained with, as a registry the trainer picks from by ``objective.kind``.

- ``interpolant``: SiT's velocity matching on the interpolant x_t = alpha(t) x0 + sigma(t) noise (Ma et al. 2024,
  "SiT"), the paper's main objective;
- ``iddpm``: DiT's improved-DDPM hybrid loss (Nichol & Dhariwal 2021), used by the paper for REPA on DiT.

An objective (``Objective``) owns its step: ``inputs(ctx)`` draws what it needs (times, noise, the condition's
dropout, teacher outputs, the variants' extras) from named random streams of (seed, step), and ``loss(features,
inputs, cfg)`` returns a ``LossOutput``: the total and named terms that the loop logs without knowing them. Both
objectives add the same alignment term (``repa.losses.with_alignment``). ``features`` is a callable
``(x_t, t, cond, **kwargs) -> ModelOutput``: a network's ``forward_features``, or the ``FeaturesView`` that DDP wraps
in training. A new objective is a subclass and one ``OBJECTIVES`` entry (docs/CONTRACTS.md).

The alignment term's successors are options of the same objective (docs/VARIANTS.md):

- iREPA (Singh et al. 2025): ``model.projector = "conv"`` and ``objective.target_norm = "spatial"``: the teacher
  tokens are spatially normalised before the cosine (``alignment_targets``);
- SRA (Jiang et al. 2025): ``objective.target = "self"``: the targets are block ``objective.self_depth`` of the
  model's EMA at the lower noise level t - gap * u, in float32 (``self_alignment_targets``); the objective takes the
  EMA network from the step's context (``ema_features``) and draws the uniforms u (``gap_uniforms``); the term is
  SRA's smooth-L1 with its epoch schedule (``sra_weight``) or its per-channel cosine (``objective.self_loss``,
  ``repa.losses.self_alignment_loss``);
- HASTE (Wang et al. 2025): ``objective.attn_coeff > 0``: the attention logits of blocks ``objective.attn_layers``
  are aligned with the teacher's attention maps (``teacher_attention``, from ``Encoder.tokens_and_attention``);
  both terms stop at ``objective.align_stop_step``;
- REG (Wu et al. 2025): ``model.class_token``: the teacher's class token (``class_tokens``) is noised with the
  image at the same t (its own noise ``class_noise``), denoised by the network as one more token, and its velocity
  error is added with weight ``objective.class_token_coeff``; the alignment targets gain the class token as token 0
  (``class_token_terms``).
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from repa.autoencoder import sample_latents
from repa.conditions import condition_of
from repa.config import ConfigError, ObjectiveConfig, TrainConfig
from repa.config_validate import validate_train
from repa.diffusion.objective import iddpm_repa_loss
from repa.fields import collect
from repa.losses import (LossOutput, alignment_loss, denoising_loss, self_alignment_loss, spatial_normalize,
                         with_alignment)
from repa.paths import get_path
from repa.teachers import TeacherNeeds, Teachers
from repa.utils import from_uint8


def sample_time(batch_size: int, cfg: ObjectiveConfig, *, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Draw t (B,) in [0, 1]: uniform, or lognormal (sigma = exp(N(0, 1)) mapped through the path)."""
    if cfg.time_sampling == "uniform":
        return torch.rand(batch_size, generator=generator, device=device)
    if cfg.time_sampling == "lognormal":
        ratio = torch.exp(torch.randn(batch_size, generator=generator, device=device))
        return get_path(cfg.path).time_from_sigma_ratio(ratio)
    raise ValueError(f"objective.time_sampling: unknown {cfg.time_sampling!r}; use 'uniform' or 'lognormal'")


def alignment_targets(encoder_tokens: list[torch.Tensor] | None, cfg: ObjectiveConfig) -> list[torch.Tensor] | None:
    """The teacher tokens the projector outputs are aligned with: as given, or spatially normalised (iREPA,
    ``objective.target_norm = "spatial"``) with ``objective.target_norm_gamma``."""
    if encoder_tokens is None or cfg.target_norm == "none":
        return encoder_tokens
    return [spatial_normalize(y, cfg.target_norm_gamma) for y in encoder_tokens]


def self_alignment_targets(ema_features, x0: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor,
                           t: torch.Tensor, gap_uniforms: torch.Tensor, cfg: ObjectiveConfig) -> list[torch.Tensor]:
    """SRA's targets (Jiang et al. 2025, "Self-Representation Alignment"): the output tokens (B, N, D) of block
    ``cfg.self_depth`` of the EMA network at the lower noise level t' = clamp(t - gap * u, 0, 1), on the same
    clean input, noise and (dropped) labels as the model; no gradient flows into them.

    Args:
        ema_features: the EMA network's ``forward_features`` (or a ``FeaturesView`` of it).
        gap_uniforms: (B,) u ~ U(0, 1), drawn by the trainer from the step's generator.
    """
    if ema_features is None or gap_uniforms is None:
        raise ValueError("self-alignment (objective.target='self') needs the EMA network (ema_features) and the "
                         "time-gap uniforms (gap_uniforms) of the batch")
    path = get_path(cfg.path)
    t_ema = (t - cfg.self_time_gap * gap_uniforms.to(t)).clamp(0.0, 1.0)
    # in float32 whatever the run's precision: the reference's EMA is not wrapped by accelerate's autocast
    with torch.no_grad(), torch.autocast(device_type=x0.device.type, enabled=False):
        x_ema = path.interpolate(x0.float(), noise.float(), t_ema.float())
        out = ema_features(x_ema, t_ema.float(), labels, layers=(cfg.self_depth,))
    return [out.hidden[cfg.self_depth].detach().float()]


def sra_weight(cfg: ObjectiveConfig, step: int) -> float:
    """The factor of ``proj_coeff`` in SRA's smooth-L1 term at optimizer step ``step`` (0-based), from the reference's
    ``train.py`` (256 px: ``2 * 0.1 ** (((epoch - 149) / 1000 + 1) if epoch > 149 else 1)``, with 2 = proj_coeff):
    0.1 ** f(epoch), f = 1 through epoch ``self_decay_start``, then 1 + (epoch - start) / ``self_decay_epochs``; the
    epoch is ``step // self_epoch_steps`` (the reference's epoch counter in a step-based trainer). 1 for the
    cosine loss, which the reference weights 0.5 without a schedule."""
    if cfg.self_loss != "smooth_l1":
        return 1.0
    epoch = step // cfg.self_epoch_steps
    exponent = (epoch - cfg.self_decay_start) / cfg.self_decay_epochs + 1 if epoch > cfg.self_decay_start else 1
    return 0.1 ** exponent


def class_token_terms(class_tokens: torch.Tensor, class_noise: torch.Tensor | None, t: torch.Tensor,
                      cfg: ObjectiveConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """REG (Wu et al. 2025, Martinser/REG ``loss.py``): the noisy class token and its target velocity, both (B, E),
    on the interpolant of the image: c_t = alpha(t) c + sigma(t) eps_c, v_c = alpha'(t) c + sigma'(t) eps_c."""
    if class_noise is None:
        raise ValueError("REG (model.class_token) needs the class token's noise (class_noise) of the batch")
    path = get_path(cfg.path)
    return path.interpolate(class_tokens, class_noise, t), path.velocity(class_tokens, class_noise, t)


def interpolant_loss(features, x0: torch.Tensor, labels: torch.Tensor, encoder_tokens: list[torch.Tensor] | None,
                     cfg: ObjectiveConfig, *, t: torch.Tensor, noise: torch.Tensor,
                     proj_coeff: float | None = None, attn_coeff: float | None = None,
                     teacher_attention: list[torch.Tensor] | None = None, ema_features=None,
                     gap_uniforms: torch.Tensor | None = None, class_tokens: torch.Tensor | None = None,
                     class_noise: torch.Tensor | None = None) -> LossOutput:
    """REPA on the interpolant objective for clean inputs x0 (B, C, H, W): velocity MSE + lambda * alignment.

    Args:
        features: ``(x_t, t, y, *, project) -> ModelOutput`` (a network's ``forward_features``).
        encoder_tokens: frozen-encoder tokens of the clean images, one (B, N, E) per encoder; ignored when
            the effective lambda is 0 or the target is the model itself.
        cfg: the objective section (path, lambda, the variant options).
        t: (B,) diffusion times (``sample_time``); noise: (B, C, H, W) standard normal.
        proj_coeff: the lambda for this step (defaults to ``cfg.proj_coeff``; the trainer passes the scheduled one).
        attn_coeff: HASTE's attention weight for this step (defaults to ``cfg.attn_coeff``).
        teacher_attention: HASTE: one (B, H_t, N, N) teacher attention distribution per ``cfg.attn_layers`` entry.
        ema_features, gap_uniforms: SRA (``cfg.target == "self"``): see ``self_alignment_targets``.
        class_tokens, class_noise: REG (a network with ``config.class_token``): the teacher's class tokens (B, E)
            of the clean images and their standard normal noise (B, E).
    """
    lam = cfg.proj_coeff if proj_coeff is None else proj_coeff
    attn_lam = cfg.attn_coeff if attn_coeff is None else attn_coeff
    path = get_path(cfg.path)
    x_t = path.interpolate(x0, noise, t)
    target = path.velocity(x0, noise, t)
    align_fn = alignment_loss
    if lam > 0 and cfg.target == "self":
        tokens = self_alignment_targets(ema_features, x0, noise, labels, t, gap_uniforms, cfg)
        align_fn = functools.partial(self_alignment_loss, kind=cfg.self_loss)
    else:
        tokens = alignment_targets(encoder_tokens, cfg) if lam > 0 else None
    extra = {"attention": tuple(cfg.attn_layers)} if attn_lam > 0 else {}
    if class_tokens is not None:
        extra["class_token"], class_target = class_token_terms(class_tokens, class_noise, t, cfg)
        if tokens:          # the class token (token 0 of the projected tokens) is aligned too, as the reference
            tokens = [torch.cat([class_tokens[:, None].to(y), y], dim=1) for y in tokens]      # (B, 1 + N, E)
    out = features(x_t, t, labels, project=lam > 0, **extra)
    prediction = out.prediction[:, : x0.shape[1]]       # learned-sigma nets: the first C channels
    student_attention = [out.attention[i] for i in cfg.attn_layers] if attn_lam > 0 else None
    loss = with_alignment(denoising_loss(prediction, target).mean(), out, tokens, lam, attn_coeff=attn_lam,
                          student_attention=student_attention, teacher_attention=teacher_attention,
                          attention_term=cfg.attn_coeff > 0, align_fn=align_fn)
    if class_tokens is not None:
        cls = denoising_loss(out.class_token, class_target).mean()
        loss.total, loss.terms["cls_loss"] = loss.total + cfg.class_token_coeff * cls, cls.detach()
    return loss


# ---- one step's inputs --------------------------------------------------------------------------------------------

def step_generator(seed: int, step: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of named random stream ``stream`` at training step ``step``: a function of (seed, step,
    stream) only, so ranks, micro-batches and resumed runs draw the same numbers, and adding a stream changes no
    other stream's draws."""
    key = zlib.crc32(stream.encode())
    state = np.random.SeedSequence([seed % 2 ** 64, step, key]).generate_state(2, np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass
class StepContext:
    """What the training loop gives an objective at one step.

    Randomness is drawn for the whole global batch from a named stream (``generator``, then ``normal`` /
    ``uniform``) and cut to this rank's ``rows``: one process and N processes with the same global batch compute
    the same thing.
    """
    cfg: TrainConfig
    step: int
    batch: dict                   # this rank's share of the global batch, as loaded
    rows: slice                   # this rank's rows of the global batch
    device: torch.device
    teachers: Teachers
    ema_features: Callable        # the EMA network's ``forward_features`` (SRA's targets)
    features: Callable | None = None   # the live network's ``forward_features``, unwrapped (REPA-E's VAE pass)
    state: object = None          # the objective's own trained parts (``Objective.build_state``), or None
    condition: object = None      # the condition bound once to the dataset, null value on the device (None: bound
                                  # from the batch)

    def generator(self, stream: str) -> torch.Generator:
        return step_generator(self.cfg.seed, self.step, stream, self.device)

    def normal(self, generator: torch.Generator, *shape: int) -> torch.Tensor:
        """Standard normal draws (G, *shape) for the global batch from ``generator``, this rank's rows."""
        g = self.cfg.global_batch_size
        return torch.randn((g, *shape), generator=generator, device=self.device)[self.rows]

    def uniform(self, generator: torch.Generator) -> torch.Tensor:
        """U(0, 1) draws (G,) for the global batch from ``generator``, this rank's rows."""
        return torch.rand(self.cfg.global_batch_size, generator=generator, device=self.device)[self.rows]


def clean_inputs(ctx: StepContext) -> torch.Tensor:
    """Model-space clean inputs (B, C, H, W): a fresh posterior sample of the stored latents (stream
    ``posterior``), or pixels scaled to [-1, 1]."""
    batch = ctx.batch
    if ctx.cfg.model.space == "latent":
        if "latent_mean" not in batch:
            raise ConfigError("model.space is 'latent' but the dataset has no latents; prepare it with "
                              "`repa prepare --vae ...`, or train in pixel space (model.space=pixel)")
        mean = batch["latent_mean"].to(ctx.device, non_blocking=True)
        eps = ctx.normal(ctx.generator("posterior"), *mean.shape[1:])
        return sample_latents(mean, batch["latent_std"].to(ctx.device, non_blocking=True), eps=eps)
    return from_uint8(batch["image"].to(ctx.device, non_blocking=True))


def condition_inputs(ctx: StepContext):
    """The condition values of the batch with the condition's training dropout (stream ``condition``) to its null
    value (a text condition's empty caption: ``ctx.condition``, bound once by the loop, else from the batch)."""
    condition = ctx.condition if ctx.condition is not None else condition_of(ctx.cfg.model).bind(ctx.batch)
    values = condition.values(ctx.batch, ctx.device)
    return condition.drop(values, ctx.uniform(ctx.generator("condition")))


def schedule(o: ObjectiveConfig, step: int, coeff: float) -> float:
    """A loss weight at ``step``: constant, optionally decayed linearly to 0 at ``align_stop_step`` (HASTE)."""
    stop, decay = o.align_stop_step, o.align_decay_steps
    if stop <= 0:
        return coeff
    if step >= stop:
        return 0.0
    if decay > 0 and step >= stop - decay:
        return coeff * (stop - step) / decay
    return coeff


# ---- the registry ----------------------------------------------------------------------------------------------------

class Objective:
    """One training objective: what a network trained with it predicts, what it needs from the teachers, the
    inputs it draws for a step, and its loss. A new objective is a subclass and one ``OBJECTIVES`` entry.

    ``inputs(ctx)`` returns a dict of this rank's per-sample tensors (first dimension the batch, or lists of such)
    and other values; the loop cuts the tensors into micro-batches and calls ``loss(features, inputs, cfg)``, which
    returns a ``LossOutput`` (a total and named terms, all logged).
    """
    name: str = ""
    prediction: str = "velocity"

    def check(self, cfg: TrainConfig) -> None:
        """Raise ConfigError where ``cfg`` does not fit this objective (called before anything is built)."""
        _require(cfg.model.prediction == self.prediction, "model.prediction",
                 f"objective.kind={self.name!r} trains a {self.prediction} network; set "
                 f"model.prediction={self.prediction} (got {cfg.model.prediction!r})")

    def teacher_needs(self, cfg: TrainConfig) -> TeacherNeeds:
        return TeacherNeeds()

    def batch_keys(self, cfg: TrainConfig) -> list[str]:
        """The dataset arrays its inputs read besides the condition and the teachers'."""
        return ["latent_mean", "latent_std"] if cfg.model.space == "latent" else ["image"]

    def check_dataset(self, cfg: TrainConfig, dataset) -> None:
        """Raise ConfigError where ``dataset`` does not fit (before anything is built or written)."""
        from repa.data.checks import check_dataset_for_model
        check_dataset_for_model(cfg, dataset)

    def build_state(self, cfg: TrainConfig, device) -> object:
        """Parts the objective trains besides the network (modules, optimisers), with ``state_dict`` /
        ``load_state_dict`` for the checkpoint; given to ``inputs`` as ``ctx.state``. None: nothing."""
        return None

    def inputs(self, ctx: StepContext) -> dict:
        raise NotImplementedError

    def loss(self, features, inputs: dict, cfg: ObjectiveConfig) -> LossOutput:
        raise NotImplementedError


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: {message}")


class Interpolant(Objective):
    """SiT's velocity matching with REPA's alignment term and its successors' options (module docstring)."""
    name, prediction = "interpolant", "velocity"

    def teacher_needs(self, cfg: TrainConfig) -> TeacherNeeds:
        o = cfg.objective
        if o.target == "self":
            return TeacherNeeds()
        return TeacherNeeds(tokens=o.proj_coeff > 0 or bool(o.align_stop_step), attention=o.attn_teacher_layers
                            if o.attn_coeff > 0 else (), class_token=cfg.model.class_token)

    def inputs(self, ctx: StepContext) -> dict:
        cfg, o = ctx.cfg, ctx.cfg.objective
        x0 = clean_inputs(ctx)
        diffusion = ctx.generator("diffusion")
        t = sample_time(cfg.global_batch_size, o, generator=diffusion, device=ctx.device)[ctx.rows]
        noise = ctx.normal(diffusion, *x0.shape[1:])
        lam, attn_lam = schedule(o, ctx.step, o.proj_coeff), schedule(o, ctx.step, o.attn_coeff)
        if o.target == "self":                       # SRA's smooth-L1 weight schedule (1 for its cosine loss)
            lam *= sra_weight(o, ctx.step)
        class_token = cfg.model.class_token
        tokens, attention, classes = (None, None, None)
        if (lam > 0 and o.target == "encoders") or attn_lam > 0 or class_token:
            tokens, attention, classes = ctx.teachers.outputs(
                ctx.batch, ctx.device, attention=o.attn_teacher_layers if attn_lam > 0 else (),
                class_token=class_token)
        inputs = dict(x0=x0, cond=condition_inputs(ctx), encoder_tokens=tokens, t=t, noise=noise, proj_coeff=lam)
        if o.attn_coeff > 0:                         # HASTE
            inputs.update(attn_coeff=attn_lam, teacher_attention=attention)
        if class_token:                              # REG
            inputs.update(class_tokens=classes, class_noise=ctx.normal(ctx.generator("class-token"),
                                                                        cfg.model.class_token_dim))
        if o.target == "self":                       # SRA
            inputs.update(ema_features=ctx.ema_features, gap_uniforms=ctx.uniform(ctx.generator("time-gap")))
        return inputs

    def loss(self, features, inputs: dict, cfg: ObjectiveConfig) -> LossOutput:
        inputs = dict(inputs)
        return interpolant_loss(features, inputs.pop("x0"), inputs.pop("cond"), inputs.pop("encoder_tokens"), cfg,
                                **inputs)


class IDDPM(Objective):
    """DiT's improved-DDPM hybrid loss with REPA's alignment term (epsilon and learned variance)."""
    name, prediction = "iddpm", "epsilon"

    def check(self, cfg: TrainConfig) -> None:
        super().check(cfg)
        o = cfg.objective
        _require(o.time_sampling == "uniform", "objective.time_sampling",
                 "the iddpm objective samples timesteps uniformly; use 'uniform'")
        _require(o.attn_coeff == 0, "objective.attn_coeff", "attention alignment (HASTE) runs on the interpolant "
                 f"objective; got objective.kind={o.kind!r}")
        _require(o.target == "encoders", "objective.target", "self-alignment (SRA) runs on the interpolant "
                 f"objective; got objective.kind={o.kind!r}")

    def teacher_needs(self, cfg: TrainConfig) -> TeacherNeeds:
        return TeacherNeeds(tokens=cfg.objective.proj_coeff > 0 or bool(cfg.objective.align_stop_step))

    def inputs(self, ctx: StepContext) -> dict:
        o = ctx.cfg.objective
        x0 = clean_inputs(ctx)
        diffusion = ctx.generator("diffusion")
        t = sample_time(ctx.cfg.global_batch_size, o, generator=diffusion, device=ctx.device)[ctx.rows]
        noise = ctx.normal(diffusion, *x0.shape[1:])
        lam = schedule(o, ctx.step, o.proj_coeff)
        tokens = ctx.teachers.outputs(ctx.batch, ctx.device)[0] if lam > 0 else None
        return dict(x0=x0, cond=condition_inputs(ctx), encoder_tokens=tokens, t=t, noise=noise, proj_coeff=lam)

    def loss(self, features, inputs: dict, cfg: ObjectiveConfig) -> LossOutput:
        inputs = dict(inputs)
        return iddpm_repa_loss(features, inputs.pop("x0"), inputs.pop("cond"), inputs.pop("encoder_tokens"), cfg,
                               **inputs)


class EndToEnd(Interpolant):
    """REPA-E (Leng et al., ICCV 2025; End2End-Diffusion/REPA-E ``train_repae.py``): the VAE is tuned with the
    transformer. Each step first updates the VAE (its regulariser + ``e2e.vae_align_proj_coeff`` x the alignment
    loss through the transformer) and the discriminator (``repa.e2e.tune_vae``), then gives the transformer the
    BatchNorm-normalised latents with the gradient stopped: the interpolant loss with REPA's alignment term."""
    name, prediction = "repa-e", "velocity"

    def check(self, cfg: TrainConfig) -> None:
        from repa.e2e_config import validate_e2e
        super().check(cfg)
        validate_e2e(cfg.e2e)
        m, o = cfg.model, cfg.objective
        _require(m.space == "latent" and not m.class_token and m.projector == "mlp", "model.space",
                 "REPA-E tunes a VAE for a latent SiT with the MLP projectors (no REG class token)")
        _require(m.family != "MMDiT", "model.name", "REPA-E tunes the VAE of a class-conditional SiT (its "
                 "train_repae.py); for text-to-image, tune it on ImageNet and train the MMDiT on its exported VAE")
        _require(o.target == "encoders" and o.attn_coeff == 0 and bool(cfg.encoders), "encoders",
                 "REPA-E aligns with teacher encoders (objective.target=encoders, no HASTE term)")
        _require(cfg.parallel == "ddp", "parallel", "REPA-E runs with parallel=ddp: the VAE's pass goes backward "
                 "through the SiT, where FSDP's gradient hooks expect the SiT's own backward")
        _require(cfg.sample_every == 0, "sample_every", "training previews decode with a fixed VAE; sample the "
                 "checkpoint with its exported VAE instead (`repa export`, docs/REPA-E.md)")

    def teacher_needs(self, cfg: TrainConfig) -> TeacherNeeds:
        return TeacherNeeds(tokens=True)

    def batch_keys(self, cfg: TrainConfig) -> list[str]:
        return ["image"]

    def check_dataset(self, cfg: TrainConfig, dataset) -> None:
        import dataclasses
        from repa.data.checks import check_dataset_for_model
        pixels = dataclasses.replace(cfg.model, space="pixel", in_channels=dataset.channels,
                                     input_size=dataset.resolution)       # the VAE checks the channels
        check_dataset_for_model(dataclasses.replace(cfg, model=pixels), dataset)     # images, labels, shards

    def build_state(self, cfg: TrainConfig, device) -> object:
        from repa.e2e import EndToEndState
        return EndToEndState(cfg, device)

    def inputs(self, ctx: StepContext) -> dict:
        from repa.e2e import tune_vae
        cfg, o = ctx.cfg, ctx.cfg.objective
        diffusion = ctx.generator("diffusion")
        shape = ctx.state.latent_shape                                   # (C, h, w)
        t = sample_time(cfg.global_batch_size, o, generator=diffusion, device=ctx.device)[ctx.rows]
        noise, eps = ctx.normal(diffusion, *shape), ctx.normal(ctx.generator("posterior"), *shape)
        tokens = ctx.teachers.outputs(ctx.batch, ctx.device)[0]
        targets, labels = alignment_targets(tokens, o), condition_of(cfg.model).values(ctx.batch, ctx.device)
        path = get_path(o.path)

        def align(x: torch.Tensor) -> torch.Tensor:    # REPA-E's VAE pass: SiT in eval, blocks 1..encoder_depth
            out = ctx.features(path.interpolate(x, noise, t), t, labels, project=True,
                               stop_after=cfg.model.encoder_depth)
            return alignment_loss(out.projected, targets).mean()
        x0, terms = tune_vae(ctx.state, ctx.batch["image"].to(ctx.device), eps, align, ctx.step)
        return dict(x0=x0, cond=condition_inputs(ctx), encoder_tokens=tokens, t=t, noise=noise,
                    proj_coeff=schedule(o, ctx.step, o.proj_coeff), vae_terms=terms)

    def loss(self, features, inputs: dict, cfg: ObjectiveConfig) -> LossOutput:
        inputs = dict(inputs)
        terms = inputs.pop("vae_terms", {})
        out = super().loss(features, inputs, cfg)
        out.terms.update(terms)
        return out


OBJECTIVES: dict[str, Objective] = {"interpolant": Interpolant(), "iddpm": IDDPM(), "repa-e": EndToEnd()}


def get_objective(kind: str) -> Objective:
    """The objective registered as ``kind``."""
    if kind not in OBJECTIVES:
        raise ConfigError(f"objective.kind: unknown {kind!r}; known objectives: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[kind]


def validate(cfg: TrainConfig) -> None:
    """Validate a whole training config: every field (``repa.config_validate.validate_train``) and its objective's
    own checks (``objective.kind`` must be registered, the model must predict what it trains, options it lacks),
    every problem in one ConfigError."""
    collect(lambda: validate_train(cfg), lambda: get_objective(cfg.objective.kind).check(cfg))   # all at once


def repa_loss(features, x0: torch.Tensor, labels: torch.Tensor, encoder_tokens: list[torch.Tensor] | None,
              cfg: ObjectiveConfig, *, t: torch.Tensor, noise: torch.Tensor,
              proj_coeff: float | None = None, **alignment) -> LossOutput:
    """One evaluation of the REPA objective ``cfg.kind`` (arguments as ``interpolant_loss``)."""
    inputs = dict(x0=x0, cond=labels, encoder_tokens=encoder_tokens, t=t, noise=noise, **alignment)
    if proj_coeff is not None:
        inputs["proj_coeff"] = proj_coeff
    return get_objective(cfg.kind).loss(features, inputs, cfg)


__all__ = ["OBJECTIVES", "EndToEnd", "IDDPM", "Interpolant", "Objective", "StepContext", "alignment_targets",
           "class_token_terms", "clean_inputs", "condition_inputs", "get_objective",
           "interpolant_loss", "repa_loss", "sample_time", "schedule", "self_alignment_targets", "sra_weight",
           "step_generator", "validate"]
