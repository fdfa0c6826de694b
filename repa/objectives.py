"""The denoising objectives REPA is trained with, as a registry the trainer picks from by ``objective.kind``.

- ``interpolant``: SiT's velocity matching on the interpolant x_t = alpha(t) x0 + sigma(t) noise (Ma et al. 2024,
  "SiT"), the paper's main objective;
- ``iddpm``: DiT's improved-DDPM hybrid loss (Nichol & Dhariwal 2021), used by the paper for REPA on DiT.

Every objective has the same signature ``loss(features, x0, labels, encoder_tokens, cfg, *, t, noise,
proj_coeff=None, **alignment) -> LossOutput`` and adds the same alignment term (``repa.losses.with_alignment``).
``features`` is a callable ``(x_t, t, y, *, project) -> ModelOutput``: a network's ``forward_features``, or the
``FeaturesView`` that DDP wraps in training. A new objective is one function and one registry entry.

The alignment term's successors are options of the same objective (docs/VARIANTS.md):

- iREPA (Singh et al. 2025): ``model.projector = "conv"`` and ``objective.target_norm = "spatial"``: the teacher
  tokens are spatially normalised before the cosine (``alignment_targets``);
- SRA (Jiang et al. 2025): ``objective.target = "self"``: the targets are block ``objective.self_depth`` of the
  model's EMA at the lower noise level t - gap * u (``self_alignment_targets``); the trainer passes the EMA network
  (``ema_features``) and the uniforms u (``gap_uniforms``);
- HASTE (Wang et al. 2025): ``objective.attn_coeff > 0``: the attention logits of blocks ``objective.attn_layers``
  are aligned with the teacher's attention maps (``teacher_attention``, from ``Encoder.tokens_and_attention``);
  both terms stop at ``objective.align_stop_step``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from repa.config import OBJECTIVE_PREDICTIONS, ConfigError, ObjectiveConfig
from repa.diffusion.objective import iddpm_repa_loss
from repa.losses import LossOutput, denoising_loss, spatial_normalize, with_alignment
from repa.paths import get_path


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
    with torch.no_grad():
        out = ema_features(path.interpolate(x0, noise, t_ema), t_ema, labels, layers=(cfg.self_depth,))
    return [out.hidden[cfg.self_depth].detach()]


def interpolant_loss(features, x0: torch.Tensor, labels: torch.Tensor, encoder_tokens: list[torch.Tensor] | None,
                     cfg: ObjectiveConfig, *, t: torch.Tensor, noise: torch.Tensor,
                     proj_coeff: float | None = None, attn_coeff: float | None = None,
                     teacher_attention: list[torch.Tensor] | None = None, ema_features=None,
                     gap_uniforms: torch.Tensor | None = None) -> LossOutput:
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
    """
    lam = cfg.proj_coeff if proj_coeff is None else proj_coeff
    attn_lam = cfg.attn_coeff if attn_coeff is None else attn_coeff
    path = get_path(cfg.path)
    x_t = path.interpolate(x0, noise, t)
    target = path.velocity(x0, noise, t)
    if lam > 0 and cfg.target == "self":
        tokens = self_alignment_targets(ema_features, x0, noise, labels, t, gap_uniforms, cfg)
    else:
        tokens = alignment_targets(encoder_tokens, cfg) if lam > 0 else None
    extra = {"attention": tuple(cfg.attn_layers)} if attn_lam > 0 else {}
    out = features(x_t, t, labels, project=lam > 0, **extra)
    prediction = out.prediction[:, : x0.shape[1]]       # learned-sigma nets: the first C channels
    student_attention = [out.attention[i] for i in cfg.attn_layers] if attn_lam > 0 else None
    return with_alignment(denoising_loss(prediction, target).mean(), out, tokens, lam, attn_coeff=attn_lam,
                          student_attention=student_attention, teacher_attention=teacher_attention)


@dataclass(frozen=True)
class Objective:
    """One denoising objective: its loss (the signature above) and how its times are drawn."""
    name: str
    loss: Callable[..., LossOutput]
    sample_time: Callable[..., torch.Tensor] = sample_time

    @property
    def prediction(self) -> str:
        """What a network trained with it predicts (``velocity`` or ``epsilon``)."""
        return OBJECTIVE_PREDICTIONS[self.name]


OBJECTIVES: dict[str, Objective] = {
    "interpolant": Objective("interpolant", interpolant_loss),
    "iddpm": Objective("iddpm", iddpm_repa_loss),       # uniform t, mapped to timesteps floor(1000 t)
}


def get_objective(kind: str) -> Objective:
    """The objective registered as ``kind``."""
    if kind not in OBJECTIVES:
        raise ConfigError(f"objective.kind: unknown {kind!r}; known objectives: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[kind]


def repa_loss(features, x0: torch.Tensor, labels: torch.Tensor, encoder_tokens: list[torch.Tensor] | None,
              cfg: ObjectiveConfig, *, t: torch.Tensor, noise: torch.Tensor,
              proj_coeff: float | None = None, **alignment) -> LossOutput:
    """One evaluation of the REPA objective ``cfg.kind`` (arguments as ``interpolant_loss``)."""
    return get_objective(cfg.kind).loss(features, x0, labels, encoder_tokens, cfg, t=t, noise=noise,
                                        proj_coeff=proj_coeff, **alignment)


__all__ = ["OBJECTIVES", "Objective", "alignment_targets", "get_objective", "interpolant_loss", "repa_loss",
           "sample_time", "self_alignment_targets"]
