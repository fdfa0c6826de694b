"""The loss terms of REPA (Yu et al. 2025, Eq. 8): denoising, token-wise alignment, and their sum.

Pure functions of tensors (and the model's ``ModelOutput``); the objectives that produce their inputs (the
interpolant of SiT, DiT's improved DDPM) are in ``repa.objectives``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from repa.models.sit import ModelOutput


def drop_labels(labels: torch.Tensor, uniforms: torch.Tensor, prob: float, null_class: int) -> torch.Tensor:
    """Replace label i by the null class where uniforms[i] < prob (classifier-free guidance training)."""
    if prob <= 0:
        return labels
    return torch.where(uniforms < prob, torch.full_like(labels, null_class), labels)


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


@dataclass
class LossOutput:
    """Scalar losses of one batch: ``total`` = ``denoise`` + lambda * ``align``."""
    total: torch.Tensor
    denoise: torch.Tensor
    align: torch.Tensor


def with_alignment(denoise: torch.Tensor, out: ModelOutput, encoder_tokens: list[torch.Tensor] | None,
                   lam: float) -> LossOutput:
    """Eq. 8: total = denoising loss + lambda * alignment loss of the model output's projected tokens."""
    if lam > 0:
        if not encoder_tokens:
            raise ValueError("REPA (lambda > 0) needs encoder tokens for every batch")
        align = alignment_loss(out.projected, encoder_tokens).mean()
    else:
        align = torch.zeros((), device=denoise.device)
    return LossOutput(denoise + lam * align, denoise.detach(), align.detach())


__all__ = ["LossOutput", "alignment_loss", "denoising_loss", "drop_labels", "with_alignment"]
