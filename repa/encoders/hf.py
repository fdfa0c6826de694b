"""Encoder families that Hugging Face ``transformers`` implements, loaded with ``from_pretrained``.

Token selection follows REFERENCE section 2 (``last_hidden_state`` of each model, then prefix tokens dropped):

| family | transformers class | last_hidden_state | tokens kept |
|---|---|---|---|
| DINOv2 | Dinov2Model | after the final LayerNorm | patches (no CLS) |
| DINOv2 + registers | Dinov2WithRegistersModel | after the final LayerNorm | patches (no CLS, no registers) |
| DINOv3 | DINOv3ViTModel | after the final LayerNorm | patches (no CLS, no registers) |
| DINOv1 | ViTModel | after the final LayerNorm | patches (no CLS) |
| CLIP | CLIPVisionModel | transformer output, before post-LN and projection | patches (no CLS) |
| MAE | ViTMAEModel, mask ratio 0, identity order | after the final LayerNorm | patches (no CLS) |
| I-JEPA | IJepaModel | after the final LayerNorm | all tokens (there is no CLS) |
| SigLIP | SiglipVisionModel | after the post LayerNorm, before the pooling head | all tokens (no CLS) |

Position embeddings are interpolated (bicubic) by transformers whenever the input is not the training size; this
matches the reference code's resampling of the MAE / MoCo position embeddings to 16x16.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from repa.encoders.base import EncoderSpec, EncoderWeightsError, hub_download_hint, looks_like_path, missing_file_error


class HFTokens(nn.Module):
    """Runs a transformers vision model on (B, 3, S, S) and returns its patch tokens (B, N, E)."""

    def __init__(self, model: nn.Module, *, num_prefix_tokens: int, interpolate_pos_encoding: bool = False,
                 identity_mae_noise: bool = False):
        super().__init__()
        self.model = model
        self.num_prefix_tokens = num_prefix_tokens
        self.interpolate_pos_encoding = interpolate_pos_encoding
        self.identity_mae_noise = identity_mae_noise
        self.embed_dim = int(model.config.hidden_size)
        patch = model.config.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kwargs = {}
        if self.interpolate_pos_encoding:
            kwargs["interpolate_pos_encoding"] = True
        if self.identity_mae_noise:
            # ViTMAE shuffles tokens by argsort(noise) even at mask ratio 0; increasing noise keeps the grid order.
            n = (x.shape[-2] // self.patch_size) * (x.shape[-1] // self.patch_size)
            kwargs["noise"] = torch.arange(n, device=x.device, dtype=torch.float32).expand(x.shape[0], n)
        hidden = self.model(pixel_values=x, **kwargs).last_hidden_state    # (B, P + N, E)
        return hidden[:, self.num_prefix_tokens:]


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
    try:
        model = model_cls.from_pretrained(source, **kwargs)
    except OSError as exc:
        if local:
            raise EncoderWeightsError(f"encoder {spec.name}: could not load a {class_name} from the folder "
                                      f"{os.path.abspath(source)!r}: {exc}") from exc
        raise EncoderWeightsError(
            f"encoder {spec.name}: could not load hub id {source!r} (there is no local folder of that name, and the "
            f"hub is unreachable or the id is not in the Hugging Face cache). " + hub_download_hint(spec, source)
        ) from exc
    model = model.float().eval()
    patch = model.config.patch_size
    patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
    if patch != spec.patch_size:
        raise ValueError(f"encoder {spec.name}: the weights at {source!r} have patch size {patch}, but "
                         f"{spec.name} has patch size {spec.patch_size}; pick the matching encoder name")
    return model


# ---- one builder per family: (spec, weights) -> backbone -------------------------------------------------------

def build_dinov2(spec: EncoderSpec, weights: str | None) -> nn.Module:
    """DINOv2: final-norm patch tokens, CLS dropped."""
    return HFTokens(from_pretrained(spec, weights, "Dinov2Model"), num_prefix_tokens=1)


def build_dinov2_registers(spec: EncoderSpec, weights: str | None) -> nn.Module:
    """DINOv2 with registers: final-norm patch tokens, CLS and register tokens dropped."""
    model = from_pretrained(spec, weights, "Dinov2WithRegistersModel")
    return HFTokens(model, num_prefix_tokens=1 + model.config.num_register_tokens)


def build_dinov3(spec: EncoderSpec, weights: str | None) -> nn.Module:
    """DINOv3 (RoPE, any input size): final-norm patch tokens, CLS and register tokens dropped."""
    model = from_pretrained(spec, weights, "DINOv3ViTModel")
    return HFTokens(model, num_prefix_tokens=1 + model.config.num_register_tokens)


def build_dinov1(spec: EncoderSpec, weights: str | None) -> nn.Module:
    """DINOv1 (a plain ViT): final-norm patch tokens, CLS dropped."""
    model = from_pretrained(spec, weights, "ViTModel", add_pooling_layer=False)
    return HFTokens(model, num_prefix_tokens=1, interpolate_pos_encoding=True)


def build_clip(spec: EncoderSpec, weights: str | None) -> nn.Module:
    """CLIP vision tower: transformer output before the post-LayerNorm and projection, CLS dropped."""
    model = from_pretrained(spec, weights, "CLIPVisionModel")
    return HFTokens(model, num_prefix_tokens=1, interpolate_pos_encoding=True)


def build_mae(spec: EncoderSpec, weights: str | None) -> nn.Module:
    """MAE encoder without masking: final-norm tokens in grid order, CLS dropped."""
    model = from_pretrained(spec, weights, "ViTMAEModel", mask_ratio=0.0)
    model.config.mask_ratio = 0.0
    return HFTokens(model, num_prefix_tokens=1, interpolate_pos_encoding=True, identity_mae_noise=True)


def build_ijepa(spec: EncoderSpec, weights: str | None) -> nn.Module:
    """I-JEPA target encoder: final-norm tokens, all of them (no CLS exists)."""
    model = from_pretrained(spec, weights, "IJepaModel")
    return HFTokens(model, num_prefix_tokens=0, interpolate_pos_encoding=True)


def build_siglip(spec: EncoderSpec, weights: str | None) -> nn.Module:
    """SigLIP vision tower: post-LayerNorm tokens before the attention-pooling head, all of them."""
    model = from_pretrained(spec, weights, "SiglipVisionModel")
    return HFTokens(model, num_prefix_tokens=0, interpolate_pos_encoding=True)
