"""The frozen-encoder contract: uint8 images in, patch tokens on the model's token grid out.

Every encoder of the registry is an :class:`Encoder` wrapping a family-specific *backbone*: a module that maps a
normalised float image (B, 3, S, S) to its patch tokens (B, (S / patch)**2, E) in row-major order. The wrapper owns
everything the REPA reference code scatters over the training script (sihyun-yu/REPA, train.py and utils.py):

1. uint8 -> float in [0, 1], greyscale replicated to RGB;
2. the family's mean/std normalisation;
3. the resize rule of the family, which also decides how the token grid is matched to the SiT grid:

   - ``resize="grid"`` (DINOv2, DINOv3, CLIP, I-JEPA, SigLIP, EfficientNet-Lite): the image is resized (bicubic,
     ``align_corners=False``, no antialias, as the reference code) to ``patch * token_grid`` so that the backbone's
     own grid *is* the token grid. DINOv2 at 256 px and grid 16: 224 px, as the reference.
   - ``resize="native"`` (DINOv1, MoCo v3, MAE): the image is fed at the dataset resolution, which must be a multiple
     of the patch size (the reference feeds 256 px to the patch-16 ViTs, position tables resampled to 16x16 at
     load; here to the native grid, see ``repa/encoders/hf.py``).
     When ``resolution / patch`` differs from ``token_grid``, the *token map* is interpolated: area averaging when
     the native grid is an integer multiple of the token grid, bilinear otherwise.

Normalising before or after the bicubic resize gives the same result (bicubic weights sum to one and nothing is
clamped), so the order is fixed here: normalise, then resize.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from repa.config import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

RESIZE_RULES = ("grid", "native")


class EncoderWeightsError(FileNotFoundError):
    """Encoder weights could not be found; the message names the file or hub id and how to supply it locally."""


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry: everything known about an encoder without loading it.

    ``build(spec, weights, grid) -> backbone`` loads the weights (``weights`` is a local path, a hub id, or None
    for the default source) and returns a module mapping (B, 3, S, S) normalised floats to (B, (S/patch)**2, E)
    tokens; ``grid`` = S / patch is the grid it will see (ViTs whose reference resamples the position table at load
    do so to this grid).
    """
    name: str
    family: str
    embed_dim: int                    # E of the released weights
    patch_size: int                   # token stride in input pixels (patch size, or feature-map stride)
    native_resolution: int            # the resolution the weights were trained at
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str                       # "grid" or "native", see the module docstring
    tokens: str                       # which tokens are returned, in words
    weights_origin: str               # where the default weights come from, in words
    build: Callable[["EncoderSpec", str | None, int], nn.Module] = field(repr=False, compare=False)
    hub_id: str | None = None         # default Hugging Face hub id (None: the weights are a file)
    default_file: str | None = None   # default local weights file when there is no hub id
    # Attention maps on the token grid (HASTE): heads and blocks of the released weights; 0 = it cannot give them
    attention_heads: int = 0
    depth: int = 0
    # The image-level token REG (model.class_token) denoises with the image: "cls" (the ViT's class token, from
    # the same layer and norm as the patch tokens), "pooled" (a CNN's global average of its tokens: what its
    # classifier reads for the -head variants; computed from cached tokens too), or "" (none: refused for REG)
    class_token: str = ""


# ----------------------------------------------------------------------------------------------------------------
# Grid planning (used at config time by check_encoder and at load time by Encoder)
# ----------------------------------------------------------------------------------------------------------------

def plan_grid(spec: EncoderSpec, resolution: int, token_grid: int) -> tuple[int, int]:
    """Return ``(input_size, native_grid)``: the side the backbone sees and the grid it produces.

    Raises ConfigError when ``resolution`` and ``token_grid`` cannot be matched under the family's resize rule.
    """
    if not isinstance(resolution, int) or resolution < 1:
        raise ConfigError(f"data.resolution: must be a positive integer for encoder {spec.name!r}, got {resolution!r}")
    if not isinstance(token_grid, int) or token_grid < 1:
        raise ConfigError(f"token grid: must be a positive integer for encoder {spec.name!r}, got {token_grid!r}")
    if spec.resize == "grid":
        return spec.patch_size * token_grid, token_grid
    if resolution % spec.patch_size != 0:
        lower = resolution // spec.patch_size * spec.patch_size
        hint = f"{lower} or {lower + spec.patch_size}" if lower else str(spec.patch_size)
        raise ConfigError(
            f"data.resolution: encoder {spec.name!r} reads the image at the dataset resolution without resizing "
            f"(as the reference code), so the resolution must be a multiple of its patch size {spec.patch_size}; "
            f"got {resolution}. Use a resolution such as {hint}, or an encoder that resizes to the token grid "
            f"(e.g. dinov2-vit-b, efficientnet-lite0).")
    return resolution, resolution // spec.patch_size


def resample_tokens(tokens: torch.Tensor, grid: int, token_grid: int) -> torch.Tensor:
    """(B, grid**2, E) row-major tokens -> (B, token_grid**2, E): area when shrinking by an integer factor, else
    bilinear (align_corners=False)."""
    if grid == token_grid:
        return tokens
    b, _, e = tokens.shape
    fmap = tokens.transpose(1, 2).reshape(b, e, grid, grid)                    # (B, E, h, w)
    if grid % token_grid == 0:
        fmap = F.interpolate(fmap, size=(token_grid, token_grid), mode="area")
    else:
        fmap = F.interpolate(fmap, size=(token_grid, token_grid), mode="bilinear", align_corners=False)
    return fmap.flatten(2).transpose(1, 2)                                     # (B, N, E)


def pool_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, E) -> (B, E): the global average of a CNN teacher's tokens, its class token for REG."""
    return tokens.float().mean(dim=1)


# ----------------------------------------------------------------------------------------------------------------
# The encoder
# ----------------------------------------------------------------------------------------------------------------

class Encoder(nn.Module):
    """A frozen teacher: ``forward(uint8 (B, C, H, W)) -> float32 (B, token_grid**2, E)``.

    Always in eval mode (``train()`` is a no-op), every parameter has ``requires_grad=False`` and the forward runs
    under ``torch.no_grad``. ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the backbone under autocast; None
    keeps whatever autocast state the caller set. The tokens are returned in float32 regardless.

    Attributes: ``name``, ``embed_dim`` (E), ``token_grid``, ``resolution`` (expected input side),
    ``input_size`` (side the backbone sees), ``native_grid`` (grid the backbone produces), ``spec``.
    """

    def __init__(self, spec: EncoderSpec, backbone: nn.Module, *, resolution: int, token_grid: int,
                 autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.resolution = resolution
        self.token_grid = token_grid
        self.input_size, self.native_grid = plan_grid(spec, resolution, token_grid)
        self.autocast_dtype = autocast_dtype
        self.backbone = backbone
        self.embed_dim = int(getattr(backbone, "embed_dim", spec.embed_dim))
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "Encoder":
        """Encoders stay in eval mode whatever the caller asks (the reference code left some in train mode)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W), C in {1, 3}, H = W = resolution -> normalised float32 (B, 3, S, S), S = input_size."""
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
            raise TypeError(f"encoder {self.name}: expects uint8 images (B, C, H, W) in [0, 255], got {got}")
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"encoder {self.name}: expects images (B, C, H, W) with C in {{1, 3}}, "
                             f"got shape {tuple(images.shape)}")
        if images.shape[-2:] != (self.resolution, self.resolution):
            raise ValueError(f"encoder {self.name}: was loaded for {self.resolution}x{self.resolution} images, got "
                             f"{images.shape[-2]}x{images.shape[-1]}; load it with resolution={images.shape[-1]}")
        x = images.to(self.device, torch.float32) / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)                                        # greyscale -> RGB
        x = (x - self.mean) / self.std
        if self.input_size != self.resolution:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False)
        return x

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) at the dataset resolution -> float32 tokens (B, token_grid**2, E)."""
        x = self.preprocess(images)                                            # (B, 3, S, S)
        # autocast_dtype None leaves the caller's autocast state alone (e.g. the training loop's bf16 context)
        context = (torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)
                   if self.autocast_dtype is not None else contextlib.nullcontext())
        with context:
            tokens = self.backbone(x)                                          # (B, h*w, E)
        if tokens.shape[1] != self.native_grid ** 2:
            raise RuntimeError(f"encoder {self.name}: backbone gave {tokens.shape[1]} tokens for a "
                               f"{self.input_size}px input, expected {self.native_grid}**2")
        return resample_tokens(tokens.float(), self.native_grid, self.token_grid)

    @torch.no_grad()
    def tokens_and_attention(self, images: torch.Tensor, layers: tuple[int, ...]
                             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The tokens of ``forward`` and the attention distributions of 1-based blocks ``layers`` (HASTE).

        Each map is (B, H, N, N) float32 over the patch tokens only: the rows of the backbone's attention
        restricted to patch queries and patch keys and renormalised, which equals the softmax of the patch-to-patch
        logits (what HASTE's modified DINOv2 returns). Only encoders with ``spec.attention_heads > 0`` whose
        native grid is the token grid can give them.
        """
        if not self.spec.attention_heads or not hasattr(self.backbone, "attention_maps"):
            raise ConfigError(f"encoder {self.name} cannot give attention maps (HASTE, objective.attn_coeff > 0); "
                              f"use a DINOv2 encoder (dinov2-vit-b) or set objective.attn_coeff=0")
        if self.native_grid != self.token_grid:
            raise ConfigError(f"encoder {self.name} gives a {self.native_grid}x{self.native_grid} attention grid, "
                              f"but the model's token grid is {self.token_grid}x{self.token_grid}")
        x = self.preprocess(images)
        context = (torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)
                   if self.autocast_dtype is not None else contextlib.nullcontext())
        with context:
            tokens, maps = self.backbone.attention_maps(x, layers)
        return tokens.float(), [m.float() for m in maps]

    @torch.no_grad()
    def tokens_and_class_token(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens of ``forward`` (B, N, E) and the image's class token (B, E), float32 (REG).

        ``spec.class_token == "cls"``: the ViT's class token, taken where the patch tokens are taken (DINOv2: after
        the final norm, REG's ``x_norm_clstoken``); ``"pooled"``: the mean of the tokens (``pool_tokens``).
        """
        if self.spec.class_token == "pooled":
            tokens = self(images)
            return tokens, pool_tokens(tokens)
        if self.spec.class_token != "cls" or not hasattr(self.backbone, "tokens_and_class_token"):
            raise ConfigError(f"model.class_token: encoder {self.name} has no class token for REG; use a ViT "
                              "teacher such as dinov2-vit-b, or efficientnet-lite0 (its pooled feature)")
        x = self.preprocess(images)
        context = (torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)
                   if self.autocast_dtype is not None else contextlib.nullcontext())
        with context:
            tokens, cls = self.backbone.tokens_and_class_token(x)
        return resample_tokens(tokens.float(), self.native_grid, self.token_grid), cls.float()

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, embed_dim={self.embed_dim}, resolution={self.resolution}, "
                f"input_size={self.input_size}, token_grid={self.token_grid}")


# ----------------------------------------------------------------------------------------------------------------
# Weights location helpers shared by the families
# ----------------------------------------------------------------------------------------------------------------

def looks_like_path(source: str) -> bool:
    """A string that can only be a filesystem path (not an ``org/name`` hub id)."""
    return (os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") > 1
            or os.sep != "/" and os.sep in source or os.path.splitext(source)[1] in (".pth", ".pt", ".tar", ".bin"))


def hub_download_hint(spec: EncoderSpec, hub_id: str) -> str:
    """How to get hub weights onto an offline machine."""
    return (f"On a machine with internet: `huggingface-cli download {hub_id} --local-dir DIR` (or `hf download`), "
            f"copy DIR here and pass it as the encoder weights (load_encoder(..., weights=DIR); "
            f"`repa train --encoder-weights DIR`, `repa prepare --encoder-weights DIR`); with the weights already in "
            f"the Hugging Face cache, HF_HUB_OFFLINE=1 reads them from there without any network attempt.")


def missing_file_error(spec: EncoderSpec, path: str, how: str) -> EncoderWeightsError:
    """The error for a weights file or folder that does not exist."""
    return EncoderWeightsError(f"encoder {spec.name}: weights not found at {os.path.abspath(path)!r}. {how}")


__all__ = ["Encoder", "EncoderSpec", "EncoderWeightsError", "plan_grid", "pool_tokens", "resample_tokens",
           "IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD", "SIGLIP_MEAN", "SIGLIP_STD"]
