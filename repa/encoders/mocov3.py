"""MoCo v3 ViT-B/16 and ViT-L/16 from the released training checkpoints, run as a transformers ``ViTModel``.

The reference code loads the MoCo v3 release files (``vit-b-300ep.pth.tar``, stored as ``ckpts/mocov3_vitb.pth``):
a dict whose ``state_dict`` holds the whole MoCo model under ``module.base_encoder.*`` (the ViT, timm layout),
``module.momentum_encoder.*`` and ``module.predictor.*``. Conversion, in two steps:

1. :func:`mocov3_to_timm` keeps ``module.base_encoder.*`` without its projection head, strips the prefix and fixes
   the key-naming bug of the ViT-L release (``blocks.13.norm13``, ``blocks.13.mlp.fc13``, ``blocks.14.norm14``,
   ``blocks.14.mlp.fc14``), exactly as the reference ``fix_mocov3_state_dict``;
2. :func:`timm_vit_to_transformers` renames the timm ViT keys to ``ViTModel`` keys and splits the fused ``qkv``
   projection into query, key and value.

The reference resamples the 14x14 position embedding to 16x16 inside the state dict with timm's
``resample_abs_pos_embed`` (bicubic, antialias on); :func:`build_mocov3` does the same once at load, to the grid
the encoder will see (16x16 at 256 px), with :func:`repa.encoders.hf.resample_position_table`.
Tokens: final-norm output without CLS. The ViT has LayerNorm eps 1e-6, exact GELU, qkv bias, head width 64.
"""
from __future__ import annotations

import math
import os
import re

import torch
from torch import nn

from repa.encoders.base import EncoderSpec, EncoderWeightsError, missing_file_error
from repa.encoders.hf import HFTokens, use_position_grid
from repa.integrity import load_state_dict_file
from repa.config import ConfigError

MOCOV3_URLS = {
    "mocov3-vit-b": "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar",
    "mocov3-vit-l": "https://dl.fbaipublicfiles.com/moco-v3/vit-l-300ep/vit-l-300ep.pth.tar",
}
HEAD_DIM = 64   # MoCo v3 ViT-B: 768 / 12 heads, ViT-L: 1024 / 16 heads

_BUGGY_NAMES = (("blocks.13.norm13", "blocks.13.norm1"), ("blocks.13.mlp.fc13", "blocks.13.mlp.fc1"),
                ("blocks.14.norm14", "blocks.14.norm2"), ("blocks.14.mlp.fc14", "blocks.14.mlp.fc2"))


def mocov3_to_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MoCo v3 checkpoint ``state_dict`` -> timm VisionTransformer keys of the base encoder (no head)."""
    prefix = "module.base_encoder."
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue                                   # momentum encoder, predictor
        key = key[len(prefix):]
        for wrong, right in _BUGGY_NAMES:
            key = key.replace(wrong, right)
        if key.startswith("head.") or key.split(".")[0] == "fc":
            continue                                   # projection MLP of the contrastive objective
        out[key] = value
    if not out:
        raise ConfigError("no 'module.base_encoder.*' keys found: this is not a MoCo v3 training checkpoint")
    return out


# timm block key -> (transformers 5 layout, transformers 4 layout); "{i}" is the block index.
_BLOCK_KEYS = {
    "norm1": ("layers.{i}.layernorm_before", "encoder.layer.{i}.layernorm_before"),
    "attn.proj": ("layers.{i}.attention.o_proj", "encoder.layer.{i}.attention.output.dense"),
    "norm2": ("layers.{i}.layernorm_after", "encoder.layer.{i}.layernorm_after"),
    "mlp.fc1": ("layers.{i}.mlp.fc1", "encoder.layer.{i}.intermediate.dense"),
    "mlp.fc2": ("layers.{i}.mlp.fc2", "encoder.layer.{i}.output.dense"),
}
_QKV_KEYS = (("layers.{i}.attention.q_proj", "layers.{i}.attention.k_proj", "layers.{i}.attention.v_proj"),
             ("encoder.layer.{i}.attention.attention.query", "encoder.layer.{i}.attention.attention.key",
              "encoder.layer.{i}.attention.attention.value"))
_TOP_KEYS = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
             "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
             "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
             "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}


def timm_vit_to_transformers(state_dict: dict[str, torch.Tensor], *, legacy_layout: bool = False
                             ) -> dict[str, torch.Tensor]:
    """timm ViT keys -> ``transformers.ViTModel`` keys (``legacy_layout``: the transformers 4 names)."""
    layout = 1 if legacy_layout else 0
    out = {}
    for key, value in state_dict.items():
        if key in _TOP_KEYS:
            out[_TOP_KEYS[key]] = value
            continue
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        if match is None:
            raise KeyError(f"unexpected key {key!r} in a timm ViT state dict")
        i, name, kind = match.groups()
        if name == "attn.qkv":
            for target, part in zip(_QKV_KEYS[layout], value.chunk(3, dim=0)):
                out[f"{target.format(i=i)}.{kind}"] = part.clone()
        elif name in _BLOCK_KEYS:
            out[f"{_BLOCK_KEYS[name][layout].format(i=i)}.{kind}"] = value
        else:
            raise KeyError(f"unexpected key {key!r} in a timm ViT state dict")
    return out


def vit_from_timm_state_dict(timm_sd: dict[str, torch.Tensor]) -> nn.Module:
    """Build a ``transformers.ViTModel`` whose shape is read off a timm ViT state dict, and load it strictly."""
    from transformers import ViTConfig, ViTModel

    hidden = timm_sd["cls_token"].shape[-1]
    patch = timm_sd["patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in timm_sd if k.startswith("blocks."))
    grid = math.isqrt(timm_sd["pos_embed"].shape[1] - 1)
    config = ViTConfig(hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=max(1, hidden // HEAD_DIM),
                       intermediate_size=timm_sd["blocks.0.mlp.fc1.weight"].shape[0], hidden_act="gelu",
                       layer_norm_eps=1e-6, image_size=grid * patch, patch_size=patch, qkv_bias=True)
    model = ViTModel(config, add_pooling_layer=False)
    legacy = "layers.0.attention.q_proj.weight" not in model.state_dict()
    model.load_state_dict(timm_vit_to_transformers(timm_sd, legacy_layout=legacy), strict=True)
    return model.float().eval()


def build_mocov3(spec: EncoderSpec, weights: str | None, grid: int) -> nn.Module:
    """Load a MoCo v3 release checkpoint (``weights`` or ``spec.default_file``) as a token backbone whose position
    table is resampled to ``grid`` x ``grid`` (as the reference ``fix_mocov3_state_dict`` does to 16x16)."""
    path = weights or spec.default_file
    if not os.path.isfile(path):
        how = (f"Download the MoCo v3 release checkpoint {MOCOV3_URLS[spec.name]} and pass its path as the encoder "
               f"weights (load_encoder(..., weights=PATH); training config field encoder_weights / "
               f"--encoder-weights PATH), or save it as {spec.default_file!r} in the working directory (the "
               f"reference code's location).")
        raise missing_file_error(spec, path, how)
    try:    # a pickle of Python objects is refused (named, never executed), like a corrupt or foreign file
        checkpoint = load_state_dict_file(path, f"encoder {spec.name}: weights")
    except ValueError as exc:
        raise EncoderWeightsError(str(exc)) from None
    state_dict = checkpoint.get("state_dict", checkpoint)
    try:
        model = vit_from_timm_state_dict(mocov3_to_timm(state_dict))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise EncoderWeightsError(f"encoder {spec.name}: {os.path.abspath(path)!r} is not a MoCo v3 ViT "
                                  f"checkpoint in the release layout: {exc}") from exc
    use_position_grid(model, grid)
    return HFTokens(model, num_prefix_tokens=1, interpolate_pos_encoding=True, position_grid=grid)
