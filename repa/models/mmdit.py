"""MMDiT (Esser et al. 2024, "Scaling Rectified Flow Transformers", SD3) with REPA projectors, as the REPA
reference trains it on MS-COCO (sihyun-yu/REPA ``models/mmdit.py``, ``train_t2i.py``).

Two token streams, text (the caption's CLIP tokens through a ``Linear(context_dim, D)``) and image (patches),
each with its own adaLN modulation, attention projections and MLP, attend jointly: the queries, keys and values of
both streams are concatenated (text first) for one attention, then split back. Conditioning is the time alone
(no pooled text vector); the last block's text stream only feeds keys and values (``pre_only``). The position
table is a fixed 2-D sin-cos table of 16 x 16 (or of the grid, when larger), cropped around its centre to the
latent grid (the reference's ``cropped_pos_embed``). REPA's projectors read the image stream after block
``encoder_depth``.

The reference's sizes: hidden size 32 x depth, heads = depth (32-d heads), patch 2, MLP ratio 4. Parameter names
and shapes are the reference's, so its ``MMDiT`` state dict loads strictly (``load_state_dict(..., strict=True)``).
Weights start as the reference leaves them: PyTorch's default initialisation (no zeroed adaLN or output layer).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from repa.conditions import condition_of
from repa.config import ModelConfig
from repa.model_names import model_name
from repa.models.sit import (FinalLayer, Mlp, ModelOutput, PatchEmbed, TimestepEmbedder, build_projector, modulate,
                             sincos_2d)

POS_TABLE_SIDE = 16          # the reference's ``pos_embed_max_size``: a 16 x 16 table, cropped to the grid


def cropped_table(table: torch.Tensor, side: int, grid: int) -> torch.Tensor:
    """The centre ``grid`` x ``grid`` window of a (1, side*side, D) row-major position table, as (1, grid*grid, D)."""
    top = (side - grid) // 2
    spatial = table.reshape(1, side, side, table.shape[-1])[:, top:top + grid, top:top + grid]
    return spatial.reshape(1, grid * grid, table.shape[-1])


class StreamAttention(nn.Module):
    """One stream's attention projections: ``qkv`` in, and ``proj`` out (absent for a ``pre_only`` stream)."""

    def __init__(self, dim: int, num_heads: int, pre_only: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> q, k, v stacked as (3, B, H, L, hd)."""
        B, L, _ = x.shape
        return self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)


class StreamBlock(nn.Module):
    """One stream of a joint block (the reference's ``DismantledBlock``): adaLN-modulated pre-norm attention
    projections, then (unless ``pre_only``) the gated attention output and the gated, modulated MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, pre_only: bool):
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = StreamAttention(dim, num_heads, pre_only)
        if not pre_only:
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, (2 if pre_only else 6) * dim, bias=True))

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """q, k, v (3, B, H, L, hd) of the modulated tokens, and what ``post_attention`` needs."""
        mods = self.adaLN_modulation(c).chunk(2 if self.pre_only else 6, dim=-1)
        return self.attn.heads(modulate(self.norm1(x), mods[0], mods[1])), mods[2:]

    def post_attention(self, x: torch.Tensor, attended: torch.Tensor, mods: tuple) -> torch.Tensor:
        gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = x + gate_msa.unsqueeze(1) * self.attn.proj(attended)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class JointBlock(nn.Module):
    """SD3's joint block: text and image streams, one attention over [text; image] tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, last: bool):
        super().__init__()
        self.context_block = StreamBlock(dim, num_heads, mlp_ratio, pre_only=last)
        self.x_block = StreamBlock(dim, num_heads, mlp_ratio, pre_only=False)

    def forward(self, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor):
        """(B, L, D) text and (B, N, D) image tokens -> both updated (the text None after a ``pre_only`` block)."""
        qkv_c, mods_c = self.context_block.pre_attention(context, c)
        qkv_x, mods_x = self.x_block.pre_attention(x, c)
        q, k, v = torch.cat([qkv_c, qkv_x], dim=3).unbind(0)            # each (B, H, L + N, hd)
        out = F.scaled_dot_product_attention(q, k, v)                     # (B, H, L + N, hd)
        B, H, T, hd = out.shape
        out = out.transpose(1, 2).reshape(B, T, H * hd)
        L = context.shape[1]
        x = self.x_block.post_attention(x, out[:, L:], mods_x)
        context = None if self.context_block.pre_only else self.context_block.post_attention(context, out[:, :L],
                                                                                               mods_c)
        return context, x


class MMDiT(nn.Module):
    """Text-conditioned MMDiT with REPA projectors reading the image tokens after block ``encoder_depth``.

    ``model(x, t, y)`` returns the velocity (B, C, H, W) for latents x (B, C, H, W) at times t (B,) (0 data, 1
    noise, the raw t as the reference's ``TimestepEmbedder`` reads it) with ``y`` the caption's text-encoder tokens
    (B, L, ``context_dim``); ``forward_features`` as SiT's (``project``, ``layers``; attention maps are not offered).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.x_embedder = PatchEmbed(c.in_channels, c.hidden_size, c.patch_size)
        self.t_embedder = TimestepEmbedder(c.hidden_size)
        self.context_embedder = nn.Linear(c.context_dim, c.hidden_size)
        self.table_side = max(POS_TABLE_SIDE, c.grid_size)
        self.register_buffer("pos_embed", sincos_2d(c.hidden_size, self.table_side).unsqueeze(0), persistent=True)
        self.joint_blocks = nn.ModuleList([JointBlock(c.hidden_size, c.num_heads, c.mlp_ratio, last=i == c.depth - 1)
                                           for i in range(c.depth)])
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.out_channels)
        self.projectors = nn.ModuleList([build_projector(c.hidden_size, c.projector_dim, e, c.projector,
                                                         c.projector_kernel) for e in c.encoder_dims])
        self.gradient_checkpointing = False

    @property
    def blocks(self) -> nn.ModuleList:
        """The joint blocks (the FSDP units, as SiT's ``blocks``)."""
        return self.joint_blocks

    @property
    def condition(self):
        """What the network is conditioned on: ``repa.conditions.TextContext`` (the empty caption is its null)."""
        return condition_of(self.config)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h*w, p*p*C) -> (B, C, h*p, w*p); each token holds its patch as (p, q, C)."""
        p, C, h = self.config.patch_size, self.config.out_channels, self.config.grid_size
        x = x.reshape(x.shape[0], h, h, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], C, h * p, h * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The velocity (B, C, H, W) of x_t at times t (B,) for the caption tokens y (B, L, context_dim)."""
        return self.forward_features(x, t, y).prediction

    def forward_features(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, project: bool = False,
                         layers: tuple[int, ...] | range = (), attention: tuple[int, ...] = ()) -> ModelOutput:
        """The prediction with the REPA projector outputs (``project``) and the image stream's hidden tokens of the
        1-based blocks ``layers`` (B, N, D)."""
        c = self.config
        if tuple(x.shape[-2:]) != (c.input_size, c.input_size):
            raise ValueError(f"input is {tuple(x.shape[-2:])} but the model was built for "
                             f"{c.input_size}x{c.input_size} (model.input_size)")
        if attention:
            raise ValueError("MMDiT offers no attention maps (HASTE aligns a single-stream SiT's)")
        if y is None or y.ndim != 3 or y.shape[0] != x.shape[0] or y.shape[-1] != c.context_dim:
            got = None if y is None else tuple(y.shape)
            raise ValueError(f"this network is text-conditioned: pass y = caption tokens (B, L, {c.context_dim}) "
                             f"with B = {x.shape[0]}, got {got}")
        wanted = set(layers)
        if not wanted <= set(range(1, c.depth + 1)):
            raise ValueError(f"layers {sorted(wanted - set(range(1, c.depth + 1)))} outside 1..{c.depth}")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        h = self.x_embedder(x) + cropped_table(self.pos_embed, self.table_side, c.grid_size)     # (B, N, D)
        cond = self.t_embedder(t)                                                                 # (B, D)
        context = self.context_embedder(y.to(self.context_embedder.weight.dtype))                 # (B, L, D)
        projected, hidden = [], {}
        for index, block in enumerate(self.joint_blocks, start=1):
            if self.gradient_checkpointing and self.training:
                context, h = checkpoint(block, context, h, cond, use_reentrant=False)
            else:
                context, h = block(context, h, cond)
            if index in wanted:
                hidden[index] = h
            if project and index == c.encoder_depth:
                projected = [proj(h) for proj in self.projectors]          # each (B, N, E)
        return ModelOutput(self.unpatchify(self.final_layer(h, cond)), projected, hidden)


def config_from_state(state: dict, args: dict | None = None) -> ModelConfig:
    """The ModelConfig of an MMDiT state dict in the reference's layout (``train_t2i.py`` checkpoints), from its
    shapes and its training arguments: heads = depth (the reference's rule), patch 2, the latent grid of
    ``args.resolution`` (default 256 px: the 16 x 16 table is not cropped), caption dropout ``args.cfg_prob``."""
    args = args or {}
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("joint_blocks."))
    width, in_channels, patch = state["x_embedder.proj.weight"].shape[:3]
    encoder_dims, projector_dim, i = [], 2048, 0
    while f"projectors.{i}.4.weight" in state:
        encoder_dims.append(int(state[f"projectors.{i}.4.weight"].shape[0]))
        projector_dim, i = int(state[f"projectors.{i}.0.weight"].shape[0]), i + 1
    return ModelConfig(name=model_name("MMDiT", depth, int(width), int(patch)), depth=depth, hidden_size=int(width), num_heads=depth,
                       patch_size=int(patch), input_size=int(args.get("resolution", 256)) // 8,
                       in_channels=int(in_channels), num_classes=0, class_dropout=float(args.get("cfg_prob", 0.1)),
                       context_dim=int(state["context_embedder.weight"].shape[1]),
                       encoder_depth=int(args.get("encoder_depth", min(8, depth))), encoder_dims=tuple(encoder_dims),
                       projector_dim=projector_dim)


__all__ = ["MMDiT", "config_from_state", "JointBlock", "StreamBlock", "cropped_table", "POS_TABLE_SIDE"]
