"""DINOv2-B teacher tokens against facebookresearch/dinov2 itself (optional).

REPA builds its default teacher with ``torch.hub.load('facebookresearch/dinov2', 'dinov2_vitb14[_reg]')``, deletes
the head, resamples ``pos_embed`` once with timm's ``resample_abs_pos_embed`` to 16x16 (256 px) or 32x32 (512 px)
(utils.py ``load_encoders``), feeds ``preprocess_raw_image`` (train.py: /255, ImageNet mean/std, bicubic to
224 * resolution // 256) and keeps ``forward_features(x)["x_norm_patchtokens"]``. These tests run that pipeline
with the hub entry points of a dinov2 checkout (``pretrained=False``: the architecture torch.hub builds, without
the download) and timm, loading one random ViT-B/14 state dict into it and, renamed, into a transformers folder
read by ``repa.encoders.load_encoder``. Nothing of dinov2 is in this repository: point ``REPA_DINOV2_REPO`` at a
checkout of github.com/facebookresearch/dinov2 and install timm to run them; they skip otherwise.
"""
import os
import sys

import pytest
import torch

from repa.encoders import load_encoder

REPO = os.environ.get("REPA_DINOV2_REPO")
pytestmark = pytest.mark.skipif(not REPO, reason="set REPA_DINOV2_REPO to a checkout of facebookresearch/dinov2 "
                                                 "(and install timm) to compare against the reference code")


def _helpers():
    from tests.conftest import load_test_module
    return load_test_module("test_encoders_reference_tokens.py")


@pytest.fixture(scope="module")
def backbones():
    sys.path.insert(0, os.path.abspath(REPO))
    from dinov2.hub import backbones
    return backbones


@pytest.mark.parametrize("entry,name,registers", [("dinov2_vitb14", "dinov2-vit-b", 0),
                                                  ("dinov2_vitb14_reg", "dinov2-vit-b-reg", 4)])
def test_dinov2_b_tokens_equal_the_reference_pipeline(backbones, entry, name, registers, tmp_path):
    resample_abs_pos_embed = pytest.importorskip("timm.layers").resample_abs_pos_embed
    helpers = _helpers()
    sd = helpers.dinov2_state_dict(dim=768, depth=12, registers=registers, seed=0)     # ViT-B/14, 37x37 table
    helpers.save_dinov2_folder(sd, tmp_path, heads=12)
    for resolution in (256, 512):
        encoder = getattr(backbones, entry)(pretrained=False)
        encoder.load_state_dict(sd, strict=True)                 # the hub .pth layout: every key, nothing more
        del encoder.head                                         # REPA utils.py load_encoders, line by line
        patch_resolution = 16 * (resolution // 256)
        encoder.pos_embed.data = resample_abs_pos_embed(encoder.pos_embed.data, [patch_resolution, patch_resolution])
        encoder.head = torch.nn.Identity()
        encoder.eval()

        images = helpers._images(2, resolution)
        with torch.no_grad():
            expect = encoder.forward_features(helpers.repa_dinov2_input(images))["x_norm_patchtokens"]
        enc = load_encoder(name, resolution=resolution, token_grid=patch_resolution, weights=str(tmp_path))
        got = enc(images)
        assert got.shape == expect.shape == (2, patch_resolution ** 2, 768)
        cosine = helpers.min_cosine(got, expect)
        assert cosine > helpers.MIN_COSINE, f"{entry} at {resolution} px: minimum token cosine {cosine}"
