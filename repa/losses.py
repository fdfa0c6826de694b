"""The loss terms of REPA (Yu et al. 2025, Eq. 8): denoising, token-wise alignment, and their sum; and the terms
its successors add: iREPA's spatial normalisation of the targets, HASTE's attention-map alignment.

Pure functions of tensors (and the model's ``ModelOutput``); the objectives that produce their inputs (the
interpolant of SiT, DiT's improved DDPM) are in ``repa.objectives``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from repa.models.sit import ModelOutput


def denoising_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over (C, H, W): (B,)."""
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def alignment_loss(projected: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """REPA term: minus the cosine similarity of each projected token with the encoder token, averaged.

    Both inputs are lists (one entry per encoder) of (B, N, E). Normalisation and the dot product always run in
    float32, whatever the autocast dtype: low-precision normalisation is what makes long fp16 runs diverge.
    Returns (B,): the per-sample loss averaged over tokens and encoders.
    """
    if len(projected) != len(targets):
        raise ValueError(f"{len(projected)} projector outputs but {len(targets)} encoder token sets")
    per_encoder = []
    for z, y in zip(projected, targets):
        if z.shape[:2] != y.shape[:2] or z.shape[-1] != y.shape[-1]:
            raise ValueError(f"projector output {tuple(z.shape)} does not match encoder tokens {tuple(y.shape)}: "
                             "model tokens (grid of input_size/patch_size) must equal the encoder's token grid and "
                             "model.encoder_dims must equal the encoder widths")
        with torch.autocast(device_type=z.device.type, enabled=False):
            z32 = F.normalize(z.float(), dim=-1)
            y32 = F.normalize(y.float(), dim=-1)
            per_encoder.append(-(z32 * y32).sum(dim=-1).mean(dim=1))      # (B,)
    return torch.stack(per_encoder).mean(dim=0)


SRA_SMOOTH_L1_BETA = 0.05     # vvvvvjdy/SRA loss.py: smooth_l1_loss(a, b, beta=0.05)


def self_alignment_loss(projected: list[torch.Tensor], targets: list[torch.Tensor],
                        kind: str = "smooth_l1") -> torch.Tensor:
    """SRA's alignment term (vvvvvjdy/SRA ``SiT-SRA/loss.py``, ``Simpleloss``) of the projected student tokens
    against the EMA's tokens, both lists of one (B, N, D):

    - ``smooth_l1``: smooth-L1 with beta 0.05, elementwise (``F.smooth_l1_loss(a, b, beta=0.05)``);
    - ``cosine``: ``1 - F.cosine_similarity(a, b)`` with its default ``dim=1``, which on (B, N, D) tensors is the
      cosine along the tokens, one per channel (B, D): unlike REPA's term, a per-channel offset shared by all
      tokens changes it.

    The reference averages over everything; here over tokens and channels per sample, (B,), whose batch mean is
    the same number. Computed in float32 (both functions are float32 ops under CUDA autocast).
    """
    if len(projected) != len(targets):
        raise ValueError(f"{len(projected)} projector outputs but {len(targets)} target token sets")
    per_set = []
    for z, y in zip(projected, targets):
        if z.shape != y.shape:
            raise ValueError(f"projector output {tuple(z.shape)} does not match the EMA tokens {tuple(y.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            z32, y32 = z.float(), y.float()
            if kind == "smooth_l1":
                per_set.append(F.smooth_l1_loss(z32, y32, beta=SRA_SMOOTH_L1_BETA, reduction="none").mean(dim=(1, 2)))
            elif kind == "cosine":
                per_set.append((1 - F.cosine_similarity(z32, y32, dim=1)).mean(dim=1))
            else:
                raise ValueError(f"unknown SRA loss {kind!r}; use 'smooth_l1' or 'cosine'")
    return torch.stack(per_set).mean(dim=0)


def spatial_normalize(tokens: torch.Tensor, gamma: float, eps: float = 1e-6) -> torch.Tensor:
    """iREPA's spatial normalisation of teacher tokens (B, N, E), over the token axis, per channel:

        y' = (y - gamma * mean_n y) / (std_n y + eps)

    with the unbiased standard deviation, as ``spatial_zscore`` of End2End-Diffusion/iREPA. Removing the part
    of every token shared by the whole image (gamma = 1: all of it) leaves the contrast between positions, the
    spatial structure that the paper finds predicts the gain. Computed in float32.
    """
    y = tokens.float()
    return (y - gamma * y.mean(dim=1, keepdim=True)) / (y.std(dim=1, keepdim=True) + eps)


def attention_alignment_loss(student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor]) -> torch.Tensor:
    """HASTE's attention term (Wang et al. 2025): cross-entropy of the model's attention rows against the teacher's.

    For each aligned pair of blocks, with the teacher's H_t heads matched to the model's first H_t heads:
    ``-sum_j p_teacher[b, h, i, j] * log softmax_j(logits_model[b, h, i, :])``, averaged over samples, heads and
    query tokens, then over the pairs.

    Args:
        student_logits: one (B, H_s, N, N) attention-logit tensor per aligned model block, H_s >= H_t.
        teacher_probs: one (B, H_t, N, N) teacher attention distribution (rows sum to 1) per pair.
    Returns:
        (B,): the per-sample loss averaged over heads, queries and pairs.
    """
    if len(student_logits) != len(teacher_probs) or not student_logits:
        raise ValueError(f"{len(student_logits)} model attention maps but {len(teacher_probs)} teacher maps")
    per_pair = []
    for s, p in zip(student_logits, teacher_probs):
        heads = p.shape[1]
        if s.shape[1] < heads or s.shape[2:] != p.shape[2:] or s.shape[0] != p.shape[0]:
            raise ValueError(f"model attention {tuple(s.shape)} cannot be matched to teacher attention "
                             f"{tuple(p.shape)}: the model needs at least as many heads and the same token grid")
        with torch.autocast(device_type=s.device.type, enabled=False):
            log_q = torch.log_softmax(s[:, :heads].float(), dim=-1)              # (B, H_t, N, N)
            per_pair.append(-(p.float() * log_q).sum(dim=-1).mean(dim=(1, 2)))    # (B,)
    return torch.stack(per_pair).mean(dim=0)


@dataclass
class LossOutput:
    """One batch's loss: ``total`` (the scalar that is backpropagated) and its named, detached ``terms``, which the
    training loop logs as they are (``metrics.jsonl``, TensorBoard, W&B) without knowing them: REPA's
    ``denoise_loss``, ``align_loss`` and the weight ``lam``; the successors add theirs (``attn_loss``, ``cls_loss``)."""
    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def with_alignment(denoise: torch.Tensor, out: ModelOutput, encoder_tokens: list[torch.Tensor] | None,
                   lam: float, *, attn_coeff: float = 0.0, student_attention: list[torch.Tensor] | None = None,
                   teacher_attention: list[torch.Tensor] | None = None, attention_term: bool = False,
                   align_fn=alignment_loss) -> LossOutput:
    """Eq. 8: total = denoising loss + lambda * alignment loss of the model output's projected tokens; with
    ``attn_coeff`` > 0, plus HASTE's attention term of ``student_attention`` against ``teacher_attention``
    (``attention_term``: log ``attn_loss`` even while its weight is 0). ``align_fn(projected, targets) -> (B,)``
    is the alignment term (default REPA's ``alignment_loss``; SRA's ``self_alignment_loss``)."""
    if lam > 0:
        if not encoder_tokens:
            raise ValueError("REPA (lambda > 0) needs encoder tokens for every batch")
        align = align_fn(out.projected, encoder_tokens).mean()
    else:
        align = torch.zeros((), device=denoise.device)
    total = denoise + lam * align
    terms = {"denoise_loss": denoise.detach(), "align_loss": align.detach(),
             "lam": torch.tensor(float(lam), device=denoise.device)}
    if attn_coeff > 0:
        if not teacher_attention or not student_attention:
            raise ValueError("attention alignment (attn_coeff > 0) needs the model's and the teacher's attention maps")
        attn = attention_alignment_loss(student_attention, teacher_attention).mean()
        total = total + attn_coeff * attn
        terms["attn_loss"] = attn.detach()
    elif attention_term:
        terms["attn_loss"] = torch.zeros((), device=denoise.device)
    return LossOutput(total, terms)


__all__ = ["LossOutput", "SRA_SMOOTH_L1_BETA", "alignment_loss", "attention_alignment_loss", "denoising_loss",
           "self_alignment_loss", "spatial_normalize", "with_alignment"]
