"""Encoder-token caches: built once, used when they match, rejected with a reason when they do not."""
import logging
import os

import numpy as np
import pytest
import torch
from torch import nn

from repa.data import DataError, open_dataset
from repa.data.arrays import save_arrays
from repa.data.loader import BatchLoader
from repa.data.tokens import build_token_cache
from repa.data.verify import verify_dataset


class TinyEncoder(nn.Module):
    """Follows the Encoder contract: uint8 (B, C, H, W) at the dataset resolution -> float32 (B, grid**2, E)."""

    def __init__(self, name="tiny-enc", token_grid=4, embed_dim=6, resolution=None):
        super().__init__()
        self.name, self.token_grid, self.embed_dim = name, token_grid, embed_dim
        if resolution is not None:
            self.resolution = resolution
        torch.manual_seed(0)
        self.proj = nn.Linear(3, embed_dim)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, images):
        x = nn.functional.adaptive_avg_pool2d(images.float() / 255.0, self.token_grid)    # (B, 3, g, g)
        return self.proj(x.flatten(2).transpose(1, 2))                                      # (B, g*g, E)


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 3, 16, 16), dtype=np.uint8)
    return save_arrays(tmp_path / "ds", images, rng.integers(0, 3, 23), chunk_size=5)


def test_cache_is_built_used_and_verified(dataset):
    encoder = TinyEncoder()
    key = build_token_cache(dataset, encoder, batch_size=4, progress=False)
    ds = open_dataset(dataset)
    assert ds.token_cache_key("tiny-enc", 16, 4) == key and key in ds.keys
    idx = np.array([22, 0, 7, 7])
    batch = ds.get_batch(idx, keys=["image", key])
    assert batch[key].dtype == np.float16 and batch[key].shape == (4, 16, 6)
    expected = encoder(torch.from_numpy(batch["image"])).numpy()
    np.testing.assert_allclose(batch[key].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert verify_dataset(dataset) == []
    loader = BatchLoader(ds, 8, seed=0, keys=["label", key])
    assert set(next(loader)) == {"label", key}
    # a second build with the same encoder is a no-op; a damaged shard is caught by verify
    assert build_token_cache(dataset, encoder, progress=False) == key
    shard = os.path.join(dataset, "tokens", key.split(":", 1)[1], "000002.npy")
    with open(shard, "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    assert any("000002.npy" in p and "sha256" in p for p in verify_dataset(dataset))


def test_cache_rejected_with_a_reason(dataset, caplog):
    ds = open_dataset(dataset)
    with caplog.at_level(logging.WARNING, logger="repa.data"):
        assert ds.token_cache_key("tiny-enc", 16, 4) is None
    assert "has no token cache" in caplog.text
    build_token_cache(dataset, TinyEncoder(), progress=False)
    ds = open_dataset(dataset)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="repa.data"):
        assert ds.token_cache_key("dinov2-vit-b", 16, 4) is None
        assert "no cache for encoder 'dinov2-vit-b'" in caplog.text and "tiny-enc" in caplog.text
        caplog.clear()
        assert ds.token_cache_key("tiny-enc", 32, 4) is None
        assert "resolution 16 token_grid 4, not at resolution 32" in caplog.text
        caplog.clear()
        assert ds.token_cache_key("tiny-enc", 16, 2) is None
        assert "not at resolution 16 token_grid 2" in caplog.text


def test_cache_of_other_images_is_not_used(dataset, tmp_path, caplog):
    build_token_cache(dataset, TinyEncoder(), progress=False)
    # the images are replaced (a new preparation into the same folder keeps no cache description valid)
    rng = np.random.default_rng(1)
    cache = os.path.join(dataset, "tokens")
    os.rename(cache, tmp_path / "kept")
    save_arrays(dataset, rng.integers(0, 256, (23, 3, 16, 16), dtype=np.uint8), rng.integers(0, 3, 23),
                chunk_size=5, overwrite=True)
    os.rename(tmp_path / "kept", cache)
    with caplog.at_level(logging.WARNING, logger="repa.data"):
        assert open_dataset(dataset).token_cache_key("tiny-enc", 16, 4) is None
    assert "other images" in caplog.text
    assert any("other images" in p for p in verify_dataset(dataset))


def test_cache_resumes_and_checks_the_encoder(dataset, tmp_path):
    import shutil
    other = tmp_path / "other"
    shutil.copytree(dataset, other)
    build_token_cache(dataset, TinyEncoder(), progress=False)
    with pytest.raises(RuntimeError, match="injected"):
        build_token_cache(other, TinyEncoder(), progress=False, _fail_after_chunks=2)
    assert open_dataset(other).token_caches == {}           # no description until every shard exists
    build_token_cache(other, TinyEncoder(), progress=False)
    for sub in ("tokens/tiny-enc_r16_g4.json", "tokens/tiny-enc_r16_g4/000004.npy"):
        assert open(os.path.join(dataset, sub), "rb").read() == open(os.path.join(other, sub), "rb").read()
    assert not os.path.exists(os.path.join(other, ".progress"))
    with pytest.raises(DataError, match="built for 32 px"):
        build_token_cache(dataset, TinyEncoder(resolution=32), progress=False)

    class Wrong(TinyEncoder):
        def forward(self, images):
            return super().forward(images)[:, :3]
    with pytest.raises(DataError, match="tokens of shape"):
        build_token_cache(dataset, Wrong(name="wrong"), progress=False)
