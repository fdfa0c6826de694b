"""Encoder families that Hugging Face ``transformers`` implements, loaded with ``from_pretrained``.

Token selection follows the reference code (``last_hidden_state`` of each model, then prefix tokens dropped):

| family | transformers class | tokens taken | tokens kept |
|---|---|---|---|
| DINOv2 | Dinov2Model | after the final LayerNorm | patches (no CLS) |
| DINOv2 + registers | Dinov2WithRegistersModel | after the final LayerNorm | patches (no CLS, no registers) |
| DINOv3 | DINOv3ViTModel | after the final LayerNorm | patches (no CLS, no registers) |
| DINOv1 | ViTModel | after the final LayerNorm | patches (no CLS) |
| CLIP | CLIPVisionModel | transformer output, before post-LN and projection | patches (no CLS) |
| MAE | ViTMAEModel, mask ratio 0, identity order | last block, no final LayerNorm (REPA's ``forward_features``) | patches (no CLS) |
| I-JEPA | IJepaModel | after the final LayerNorm | all tokens (there is no CLS) |
| SigLIP | SiglipVisionModel | after the post LayerNorm, before the pooling head | all tokens (no CLS) |

Position tables. The reference code resamples the absolute position table of DINOv2 (37x37 -> 16x16 at 256 px,
32x32 at 512 px), DINOv1, MoCo v3 and MAE (14x14 -> 16x16) *once at load*, with timm's ``resample_abs_pos_embed``
(bicubic, antialias on). :func:`resample_position_table` is that operation, and the builders of those families
apply it to the grid the encoder will see, so transformers never interpolates at run time (its run-time
interpolation has antialias off, which gives a different table). CLIP, I-JEPA and SigLIP keep their table and let
transformers interpolate when the input is not their training size; DINOv3 has no table (RoPE).
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from repa.encoders.base import EncoderSpec, EncoderWeightsError, hub_download_hint, looks_like_path, missing_file_error
from repa.config import ConfigError


def resample_position_table(table: torch.Tensor, grid: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Resample an absolute position table to ``grid`` x ``grid``, as timm's ``resample_abs_pos_embed``.

    Args:
        table: (1, P + n*n, E), P prefix rows (CLS) then an n x n grid in row-major order.
        grid: the new side.
        num_prefix_tokens: P; these rows are kept unchanged.
    Returns:
        (1, P + grid*grid, E) in the dtype of ``table``; ``table`` itself when n == grid. The grid part is resampled
        by ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)`` in float32.
    """
    n = math.isqrt(table.shape[1] - num_prefix_tokens)
    if n * n != table.shape[1] - num_prefix_tokens:
        raise ValueError(f"position table of {table.shape[1]} rows is not {num_prefix_tokens} prefix rows plus a "
                         f"square grid")
    if n == grid:
        return table
    dim = table.shape[-1]
    prefix, patches = table[:, :num_prefix_tokens], table[:, num_prefix_tokens:]
    fmap = patches.float().reshape(1, n, n, dim).permute(0, 3, 1, 2)               # (1, E, n, n)
    fmap = F.interpolate(fmap, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    patches = fmap.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(table.dtype)
    return torch.cat([prefix, patches], dim=1)


def use_position_grid(model: nn.Module, grid: int) -> None:
    """Replace the (CLS + n x n) table ``model.embeddings.position_embeddings`` by its resampling to ``grid`` (once,
    at load, as the reference code): transformers then finds a table of the input's size and uses it as is."""
    embeddings = model.embeddings
    table = embeddings.position_embeddings.detach()
    embeddings.position_embeddings = nn.Parameter(resample_position_table(table, grid, 1), requires_grad=False)


class HFTokens(nn.Module):
    """Runs a transformers vision model on (B, 3, S, S) and returns its patch tokens (B, N, E).

    ``position_grid``: the grid the position table was resampled to at load (:func:`use_position_grid`); an input
    of another grid is refused rather than interpolated at run time.
    """

    def __init__(self, model: nn.Module, *, num_prefix_tokens: int, interpolate_pos_encoding: bool = False,
                 identity_mae_noise: bool = False, position_grid: int | None = None):
        super().__init__()
        self.model = model
        self.num_prefix_tokens = num_prefix_tokens
        self.interpolate_pos_encoding = interpolate_pos_encoding
        self.identity_mae_noise = identity_mae_noise
        self.position_grid = position_grid
        self.embed_dim = int(model.config.hidden_size)
        patch = model.config.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_hidden(x)[:, self.num_prefix_tokens:]

    def forward_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens (B, P + N, E) of the layer the patch tokens are taken from, prefix tokens first."""
        kwargs = {}
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        if self.position_grid is not None and grid != (self.position_grid, self.position_grid):
            raise RuntimeError(f"the position table was resampled at load for a {self.position_grid}x"
                               f"{self.position_grid} grid, got a {grid[0]}x{grid[1]} input grid")
        if self.interpolate_pos_encoding:
            kwargs["interpolate_pos_encoding"] = True       # a no-op when the table already has the input's grid
        if self.identity_mae_noise:
            # ViTMAE shuffles tokens by argsort(noise) even at mask ratio 0; increasing noise keeps the grid order.
            n = grid[0] * grid[1]
            kwargs["noise"] = torch.arange(n, device=x.device, dtype=torch.float32).expand(x.shape[0], n)
        return self.model(pixel_values=x, **kwargs).last_hidden_state     # (B, P + N, E)

    def tokens_and_class_token(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens (B, N, E) and the class token (B, E), token 0 of the same hidden state (REG)."""
        if self.num_prefix_tokens < 1:
            raise ValueError("this model has no class token (no prefix tokens)")
        hidden = self.forward_hidden(x)                                    # (B, P + N, E)
        return hidden[:, self.num_prefix_tokens:], hidden[:, 0]

    def attention_maps(self, x: torch.Tensor, layers: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Patch tokens (B, N, E) and, for each 1-based block in ``layers``, its attention over patch tokens
        (B, H, N, N): the prefix rows and columns dropped, the rows renormalised to sum to one.

        Switches the model to transformers' eager attention (the fused kernels do not return the weights).
        """
        if getattr(self.model.config, "_attn_implementation", "eager") != "eager":
            self.model.set_attn_implementation("eager")
        out = self.model(pixel_values=x, output_attentions=True)
        maps = out.attentions or ()
        if any(not 1 <= i <= len(maps) for i in layers):
            raise ValueError(f"teacher blocks {tuple(layers)} outside 1..{len(maps)} (objective.attn_teacher_layers)")
        p = self.num_prefix_tokens
        patch = [maps[i - 1][:, :, p:, p:] for i in layers]                # (B, H, N, N) each
        patch = [m / m.sum(dim=-1, keepdim=True) for m in patch]
        return out.last_hidden_state[:, p:], patch


def from_pretrained(spec: EncoderSpec, weights: str | None, class_name: str, **kwargs) -> nn.Module:
    """``transformers.<class_name>.from_pretrained`` on a local folder or hub id, in float32 and eval mode.

    Raises EncoderWeightsError naming the folder or hub id, with the command that fetches it for offline use.
    """
    import transformers

    model_cls = getattr(transformers, class_name)
    source = weights or spec.hub_id
    local = os.path.exists(source)
    if not local and weights and looks_like_path(weights):
        raise missing_file_error(spec, weights, "Expected a Hugging Face model folder (config.json and the weights). "
                                 + hub_download_hint(spec, spec.hub_id))
    from repa.offline import hub_is_reachable, offline_hint
    online = local or hub_is_reachable()
    try:   # offline: the local cache only, instead of a minute of retries
        model = model_cls.from_pretrained(source, **kwargs, **({} if online else {"local_files_only": True}))
    except OSError as exc:
        if local:
            raise EncoderWeightsError(f"encoder {spec.name}: could not load a {class_name} from the folder "
                                      f"{os.path.abspath(source)!r}: {exc}") from exc
        why = "the hub is unreachable or the id is not in the Hugging Face cache" if online else offline_hint()
        raise EncoderWeightsError(
            f"encoder {spec.name}: could not load hub id {source!r} (there is no local folder of that name, and "
            f"{why}). " + hub_download_hint(spec, source)) from exc
    model = model.float().eval()
    patch = model.config.patch_size
    patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
    if patch != spec.patch_size:
        raise ConfigError(f"encoder {spec.name}: the weights at {source!r} have patch size {patch}, but "
                         f"{spec.name} has patch size {spec.patch_size}; pick the matching encoder name")
    return model


# ---- one builder per family: (spec, weights, grid) -> backbone; grid: the patch grid the backbone will see ------

def build_dinov2(spec: EncoderSpec, weights: str | None, grid: int) -> nn.Module:
    """DINOv2: final-norm patch tokens, CLS dropped; position table resampled to ``grid`` at load."""
    model = from_pretrained(spec, weights, "Dinov2Model")
    use_position_grid(model, grid)
    return HFTokens(model, num_prefix_tokens=1, position_grid=grid)


def build_dinov2_registers(spec: EncoderSpec, weights: str | None, grid: int) -> nn.Module:
    """DINOv2 with registers: final-norm patch tokens, CLS and register tokens dropped; position table (CLS + grid,
    the registers have none) resampled to ``grid`` at load."""
    model = from_pretrained(spec, weights, "Dinov2WithRegistersModel")
    use_position_grid(model, grid)
    return HFTokens(model, num_prefix_tokens=1 + model.config.num_register_tokens, position_grid=grid)


def build_dinov3(spec: EncoderSpec, weights: str | None, grid: int) -> nn.Module:
    """DINOv3 (RoPE, any input size): final-norm patch tokens, CLS and register tokens dropped."""
    model = from_pretrained(spec, weights, "DINOv3ViTModel")
    return HFTokens(model, num_prefix_tokens=1 + model.config.num_register_tokens)


def build_dinov1(spec: EncoderSpec, weights: str | None, grid: int) -> nn.Module:
    """DINOv1 (a plain ViT): final-norm patch tokens, CLS dropped; position table resampled to ``grid`` at load."""
    model = from_pretrained(spec, weights, "ViTModel", add_pooling_layer=False)
    use_position_grid(model, grid)
    return HFTokens(model, num_prefix_tokens=1, interpolate_pos_encoding=True, position_grid=grid)


def build_clip(spec: EncoderSpec, weights: str | None, grid: int) -> nn.Module:
    """CLIP vision tower: transformer output before the post-LayerNorm and projection, CLS dropped."""
    model = from_pretrained(spec, weights, "CLIPVisionModel")
    return HFTokens(model, num_prefix_tokens=1, interpolate_pos_encoding=True)


def build_mae(spec: EncoderSpec, weights: str | None, grid: int) -> nn.Module:
    """MAE encoder without masking: the last block's tokens in grid order, CLS dropped, *without* the final
    LayerNorm (REPA's ``forward_features``, models/mae_vit.py); position table resampled to ``grid`` at load."""
    model = from_pretrained(spec, weights, "ViTMAEModel", mask_ratio=0.0)
    model.config.mask_ratio = 0.0
    use_position_grid(model, grid)
    model.layernorm = nn.Identity()
    return HFTokens(model, num_prefix_tokens=1, interpolate_pos_encoding=True, identity_mae_noise=True,
                    position_grid=grid)


def build_ijepa(spec: EncoderSpec, weights: str | None, grid: int) -> nn.Module:
    """I-JEPA target encoder: final-norm tokens, all of them (no CLS exists)."""
    model = from_pretrained(spec, weights, "IJepaModel")
    return HFTokens(model, num_prefix_tokens=0, interpolate_pos_encoding=True)


def build_siglip(spec: EncoderSpec, weights: str | None, grid: int) -> nn.Module:
    """SigLIP vision tower: post-LayerNorm tokens before the attention-pooling head, all of them."""
    model = from_pretrained(spec, weights, "SiglipVisionModel")
    return HFTokens(model, num_prefix_tokens=0, interpolate_pos_encoding=True)
