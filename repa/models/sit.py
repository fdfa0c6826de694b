"""SiT (Ma et al. 2024) with the REPA projector (Yu et al. 2025, Sec. 3.2 / Eq. 8), in the released layout.

Reads top to bottom like the papers: embeddings, the adaLN-Zero block, the final layer, the projector, then the
network. Parameter names and shapes equal those of the released SiT/REPA checkpoints (willisma/SiT, sihyun-yu/REPA), so a
reference state dict loads without renaming.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from repa.conditions import condition_of
from repa.config import ModelConfig


# ---- helpers -----------------------------------------------------------------------------------------------------

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift, with (B, D) conditioning broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) sinusoidal features laid out as [sin, cos] (MAE convention)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.double()[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (grid_size**2, dim): first half encodes the column, second the row."""
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1).float()


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) diffusion times -> (B, dim) sinusoidal features [cos, sin] of the raw time value."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# ---- embeddings ----------------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, N, D) with a strided convolution (patch p)."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t, then Linear - SiLU - Linear."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding table; the extra last row is the null class used for classifier-free guidance.

    Label dropout is applied by the objective (with an explicit generator), not here.
    """

    def __init__(self, num_classes: int, hidden_size: int, with_null_class: bool):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(with_null_class), hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


# ---- transformer block -------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention, with optional per-head qk LayerNorm."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_logits: bool = False):
        """(B, N, D) -> (B, N, D); with ``return_logits`` also the attention logits q k^T / sqrt(hd) (B, H, N, N)."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                   # each (B, H, N, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        if not return_logits:
            x = F.scaled_dot_product_attention(q, k, v)           # (B, H, N, hd)
            return self.proj(x.transpose(1, 2).reshape(B, N, D))
        logits = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)   # (B, H, N, N), HASTE aligns these
        x = logits.softmax(dim=-1).to(v.dtype) @ v                   # the same output as the fused kernel
        return self.proj(x.transpose(1, 2).reshape(B, N, D)), logits


class Mlp(nn.Module):
    """Linear - GELU(tanh) - Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiTBlock(nn.Module):
    """adaLN-Zero transformer block (DiT paper, Fig. 3)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor, return_attention: bool = False):
        """(B, N, D) tokens -> (B, N, D); with ``return_attention`` also the attention logits (B, H, N, N)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        attended = self.attn(modulate(self.norm1(x), shift_msa, scale_msa), return_attention)
        if return_attention:
            attended, logits = attended
        x = x + gate_msa.unsqueeze(1) * attended
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return (x, logits) if return_attention else x


class FinalLayer(nn.Module):
    """LayerNorm, adaLN (shift, scale), Linear to p*p*C_out per token; with ``class_token_dim`` > 0 (REG) also
    ``linear_cls``, the Linear that reads the class token's velocity (E,) off token 0."""

    def __init__(self, dim: int, patch_size: int, out_channels: int, class_token_dim: int = 0):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))
        if class_token_dim:
            self.linear_cls = nn.Linear(dim, class_token_dim, bias=True)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))

    def forward_with_class_token(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1 + N, D) tokens, class token first -> (B, N, p*p*C_out) patches and (B, E) class token."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        x = modulate(self.norm_final(x), shift, scale)
        return self.linear(x[:, 1:]), self.linear_cls(x[:, 0])


def build_projector(hidden_size: int, projector_dim: int, encoder_dim: int, kind: str = "mlp",
                    kernel: int = 3) -> nn.Module:
    """The projector h_phi of one encoder, (B, N, D) -> (B, N, E).

    ``mlp`` (REPA): Linear(D, 2048) - SiLU - Linear(2048, 2048) - SiLU - Linear(2048, E), token by token.
    ``conv`` (iREPA, Singh et al. 2025): one ``kernel`` x ``kernel`` convolution D -> E on the token grid, so each
    projected token also sees its neighbours.
    ``sra`` (SRA, Jiang et al. 2025): ``SRAHead``, Linear(D, D + E) - SiLU - Linear(D + E, E) (``projector_dim`` is
    not used).
    """
    if kind == "conv":
        return ConvProjector(hidden_size, encoder_dim, kernel)
    if kind == "sra":
        return SRAHead(hidden_size, encoder_dim)
    return nn.Sequential(
        nn.Linear(hidden_size, projector_dim), nn.SiLU(),
        nn.Linear(projector_dim, projector_dim), nn.SiLU(),
        nn.Linear(projector_dim, encoder_dim),
    )


class ConvProjector(nn.Module):
    """iREPA's projector: (B, N, D) row-major tokens -> (B, D, h, w) -> Conv2d(k, padding k // 2) -> (B, N, E)."""

    def __init__(self, hidden_size: int, encoder_dim: int, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(hidden_size, encoder_dim, kernel_size=kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        side = math.isqrt(N)
        if side * side != N:
            raise ValueError(f"the conv projector needs a square token grid, got {N} tokens")
        grid = x.transpose(1, 2).reshape(B, D, side, side)         # (B, D, h, w)
        return self.conv(grid).flatten(2).transpose(1, 2)           # (B, N, E)


class SRAHead(nn.Module):
    """SRA's projector (vvvvvjdy/SRA ``SiT-SRA/models/sit.py``, ``SimpleHead``): Linear(D, D + E) - SiLU -
    Linear(D + E, E), token by token; with SRA's E = D, Linear(D, 2D) - SiLU - Linear(2D, D). The parameter names
    are the reference's, so its checkpoints' ``ap_head.*`` weights load into it as they are."""

    def __init__(self, hidden_size: int, encoder_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(hidden_size, hidden_size + encoder_dim)
        self.linear2 = nn.Linear(hidden_size + encoder_dim, encoder_dim)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.act(self.linear1(x)))


# ---- the network -------------------------------------------------------------------------------------------------

@dataclass
class ModelOutput:
    """What ``forward_features`` returns.

    Attributes:
        prediction: (B, C_out, H, W) the network output: velocity for a SiT, epsilon (and the variance
            interpolation v) for a DiT; ``config.prediction`` names it. None after ``stop_after``.
        projected: one (B, N, E) projector output per encoder (empty unless ``project``).
        hidden: {1-based block index: (B, N, D)} output tokens of the requested blocks.
        attention: {1-based block index: (B, H, N, N)} attention logits of the requested blocks (HASTE).
        class_token: (B, E) the velocity of REG's class token (None for a network without one).

    With a class token (REG) ``projected`` covers 1 + N tokens, the class token first (the reference aligns it
    with the teacher's class token); ``hidden`` keeps the N image tokens, on the grid like every other network's.
    """
    prediction: torch.Tensor | None
    projected: list[torch.Tensor] = field(default_factory=list)
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    attention: dict[int, torch.Tensor] = field(default_factory=dict)
    class_token: torch.Tensor | None = None


class SiT(nn.Module):
    """Scalable interpolant transformer with REPA projectors reading the tokens after block ``encoder_depth``.

    ``model(x, t, y)`` returns the prediction (B, C_out, H, W); ``model.forward_features(x, t, y, project=...,
    layers=...)`` returns a ``ModelOutput`` with the projector outputs (training) and hidden tokens (analysis).
    The projectors run only when asked (never during sampling).

    With ``config.class_token`` (REG, Wu et al. 2025, "Representation Entanglement for Generation") the noisy
    teacher class token (B, E) is embedded (Linear E -> D, then a LayerNorm with affine weights), put before the
    image tokens with a zero position embedding, carried through every block, and read back by
    ``final_layer.linear_cls`` as its velocity; the parameter names are those of Martinser/REG's released model.
    Such a network is called with ``forward_features(..., class_token=...)``; ``repa.samplers`` integrates the
    image and the class token jointly.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.x_embedder = PatchEmbed(c.in_channels, c.hidden_size, c.patch_size)
        self.t_embedder = TimestepEmbedder(c.hidden_size)
        # an unconditional network (num_classes 0, repa.conditions.Unconditional) has no label table
        self.y_embedder = (LabelEmbedder(c.num_classes, c.hidden_size, with_null_class=c.class_dropout > 0)
                           if c.num_classes > 0 else None)
        pos_embed = sincos_2d(c.hidden_size, c.grid_size)                          # (N, D)
        if c.class_token:                       # the class token's position embedding is zero (the reference)
            pos_embed = torch.cat([torch.zeros(1, c.hidden_size), pos_embed])       # (1 + N, D)
            self.cls_projectors2 = nn.Linear(c.class_token_dim, c.hidden_size)      # the reference's names
            self.wg_norm = nn.LayerNorm(c.hidden_size, eps=1e-6)
        self.register_buffer("pos_embed", pos_embed.unsqueeze(0), persistent=True)
        self.blocks = nn.ModuleList([SiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio, c.qk_norm)
                                     for _ in range(c.depth)])
        self.projectors = nn.ModuleList([build_projector(c.hidden_size, c.projector_dim, e, c.projector,
                                                         c.projector_kernel) for e in c.encoder_dims])
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.out_channels, c.class_token_dim)
        self.gradient_checkpointing = False
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """As DiT/SiT initialise: xavier Linear, zero biases, N(0, .02) embeddings, zero adaLN and output layers."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        outputs = [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        if self.config.class_token:
            outputs.append(self.final_layer.linear_cls)
        for layer in outputs:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h*w, p*p*C) -> (B, C, h*p, w*p); each token holds its patch as (p, q, C)."""
        p, C = self.config.patch_size, self.config.out_channels
        h = w = int(round(x.shape[1] ** 0.5))
        x = x.reshape(x.shape[0], h, w, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], C, h * p, w * p)

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """Time conditioning; SiT embeds the raw t in [0, 1] (DiT overrides this)."""
        return self.t_embedder(t)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The prediction (B, C_out, H, W) for x_t (B, C, H, W) at times t (B,) with labels y (B,) (None for an
        unconditional network)."""
        return self.forward_features(x, t, y).prediction

    @property
    def condition(self):
        """What the network is conditioned on (``repa.conditions``): its null value, its dropout."""
        return condition_of(self.config)

    def embed_condition(self, y: torch.Tensor | None) -> torch.Tensor | float:
        """Label embeddings (B, D), or 0 for an unconditional network (which must be given y=None)."""
        if self.y_embedder is None:
            if y is not None:
                raise ValueError("this network is unconditional (model.num_classes=0): pass y=None")
            return 0.0
        if y is None:
            raise ValueError(f"this network is class-conditional ({self.config.num_classes} classes): pass labels y")
        return self.y_embedder(y)

    def embed_class_token(self, class_token: torch.Tensor | None, batch: int) -> torch.Tensor:
        """REG: the noisy class token (B, E) -> its input token (B, 1, D)."""
        if class_token is None or class_token.shape != (batch, self.config.class_token_dim):
            got = None if class_token is None else tuple(class_token.shape)
            raise ValueError(f"this network denoises a class token with the image (model.class_token, REG): pass "
                             f"class_token=(B, {self.config.class_token_dim}) to forward_features, got {got}; "
                             "repa.samplers.sample integrates both")
        return self.wg_norm(self.cls_projectors2(class_token.to(self.cls_projectors2.weight.dtype))).unsqueeze(1)

    def forward_features(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, project: bool = False,
                         layers: tuple[int, ...] | range = (), attention: tuple[int, ...] = (),
                         class_token: torch.Tensor | None = None, stop_after: int | None = None) -> ModelOutput:
        """The prediction with the REPA projector outputs, hidden tokens and attention logits.

        Args:
            x, t, y: as for ``forward``.
            project: also run the projectors on the tokens after block ``encoder_depth`` (one (B, N, E) each).
            layers: 1-based block indices whose output tokens (B, N, D) are returned in ``hidden``.
            attention: 1-based block indices whose attention logits (B, H, N, N) are returned in ``attention``
                (those blocks compute attention explicitly instead of with the fused kernel).
            class_token: REG (``config.class_token``): the noisy class token (B, E) at the same t as x; its
                velocity is returned in ``class_token``.
            stop_after: run blocks 1..stop_after only and, when that stops early, return no prediction (REPA-E's
                VAE pass needs the projector outputs alone; its ``train_repae.py`` stops the SiT there too).
        """
        if x.shape[-1] != self.config.input_size or x.shape[-2] != self.config.input_size:
            raise ValueError(f"input is {tuple(x.shape[-2:])} but the model was built for "
                             f"{self.config.input_size}x{self.config.input_size} (model.input_size)")
        wanted, with_attention = set(layers), set(attention)
        last = self.config.depth if stop_after is None else stop_after
        if not 1 <= last <= self.config.depth:
            raise ValueError(f"stop_after {stop_after} outside 1..{self.config.depth} (the model depth)")
        depths = set(range(1, last + 1))
        if not (wanted | with_attention) <= depths:
            raise ValueError(f"layers {sorted((wanted | with_attention) - depths)} outside 1..{last} (the model "
                             "depth" + (f", or stop_after {stop_after})" if stop_after is not None else ")"))
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        h = self.x_embedder(x)                                      # (B, N, D)
        reg = self.config.class_token
        if class_token is not None and not reg:
            raise ValueError("class_token given to a network without one (model.class_token=false)")
        if reg:
            h = torch.cat([self.embed_class_token(class_token, x.shape[0]), h], dim=1)     # (B, 1 + N, D)
        h = h + self.pos_embed
        c = self.embed_time(t) + self.embed_condition(y)             # (B, D)
        projected: list[torch.Tensor] = []
        hidden: dict[int, torch.Tensor] = {}
        maps: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks[:last], start=1):
            run = (lambda *a: checkpoint(block, *a, use_reentrant=False)) if (
                self.gradient_checkpointing and self.training) else block
            if index in with_attention:
                h, maps[index] = run(h, c, True)
            else:
                h = run(h, c)
            if index in wanted:
                hidden[index] = h[:, 1:] if reg else h
            if project and index == self.config.encoder_depth:
                projected = [proj(h) for proj in self.projectors]  # each (B, N, E), (B, 1 + N, E) with REG
        if last < self.config.depth:                                # stopped early: no prediction
            return ModelOutput(None, projected, hidden, maps)
        if reg:
            patches, class_velocity = self.final_layer.forward_with_class_token(h, c)
            return ModelOutput(self.unpatchify(patches), projected, hidden, maps, class_velocity)
        out = self.unpatchify(self.final_layer(h, c))               # (B, C_out, H, W)
        return ModelOutput(out, projected, hidden, maps)


class FeaturesView(nn.Module):
    """``forward`` = ``net.forward_features``: the module DDP and torch.compile wrap in training, so that the
    call that returns projector outputs goes through their hooks (they only hook ``forward``)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, **kwargs) -> ModelOutput:
        return self.net.forward_features(x, t, y, **kwargs)
