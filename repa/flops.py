"""Analytic multiply-accumulate counts of the SiT/DiT forward pass, the REPA projector and ViT teachers.

Used by the benchmarks for model-FLOPs utilisation (MFU). Counted: every matmul (attention projections, attention
scores and values, MLP, adaLN, embeddings, final layer); not counted: norms, activations, softmax (<1%).
One MAC = 2 FLOPs; a training step costs 3x the forward pass (forward + backward of activations and weights).
"""
from __future__ import annotations

from repa.config import ModelConfig
from repa.encoders import get_spec


def transformer_block_macs(tokens: int, width: int, mlp_ratio: float = 4.0) -> int:
    """Per-sample MACs of one pre-norm transformer block: qkv + proj (4 D^2), MLP (2 r D^2), QK^T and AV (2 N D)."""
    per_token = 4 * width * width + 2 * mlp_ratio * width * width
    return int(tokens * per_token + 2 * tokens * tokens * width)


def sit_forward_macs(cfg: ModelConfig, *, with_projector: bool = False) -> int:
    """Per-sample MACs of one SiT/DiT forward pass (optionally with the REPA projectors)."""
    n, d, p = cfg.num_tokens, cfg.hidden_size, cfg.patch_size
    macs = n * p * p * cfg.in_channels * d                       # patch embedding
    macs += 256 * d + d * d                                      # time embedding MLP
    macs += cfg.depth * (transformer_block_macs(n, d, cfg.mlp_ratio) + 6 * d * d)   # blocks + adaLN
    macs += 2 * d * d + n * d * p * p * cfg.out_channels         # final adaLN + linear
    if with_projector:
        macs += sum(n * (d * cfg.projector_dim + cfg.projector_dim ** 2 + cfg.projector_dim * e)
                    for e in cfg.encoder_dims)
    return int(macs)


def vit_forward_macs(tokens: int, width: int, depth: int, patch: int, channels: int = 3) -> int:
    """Per-sample MACs of a plain ViT encoder forward (patch embedding + blocks)."""
    return int(tokens * patch * patch * channels * width + depth * transformer_block_macs(tokens, width))


# Depth of the benchmarks' teachers; width and patch come from the encoder registry.
TEACHER_DEPTHS = {"dinov2-vit-s": 12, "dinov2-vit-b": 12, "dinov2-vit-l": 24, "dinov2-vit-g": 40}


def teacher_shape(name: str, resolution: int = 224) -> tuple[int, int, int, int]:
    """(tokens incl. CLS, width, depth, patch) of teacher ``name`` on ``resolution`` px inputs."""
    spec = get_spec(name)
    return ((resolution // spec.patch_size) ** 2 + 1, spec.embed_dim, TEACHER_DEPTHS[name], spec.patch_size)


def repa_train_step_flops(cfg: ModelConfig, batch: int, teacher: str | None, projector: bool = True) -> float:
    """FLOPs of one training step: 3x (SiT forward + projector) + 1x teacher forward (None: cached/vanilla)."""
    model = 3 * sit_forward_macs(cfg, with_projector=projector)
    enc = vit_forward_macs(*teacher_shape(teacher)) if teacher else 0
    return 2.0 * batch * (model + enc)
