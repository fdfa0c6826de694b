"""The dataset format: random access across shards, keys, errors, and the loader on top."""
import json
import os

import numpy as np
import pytest
import torch

from repa.data import DataError, open_dataset
from repa.data.arrays import save_arrays
from repa.data.loader import BatchLoader
from repa.data.memory import ArrayDataset


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    n = 37
    return {"image": rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8), "label": rng.integers(0, 5, n),
            "latent_mean": rng.standard_normal((n, 4, 1, 1), dtype=np.float32),
            "latent_std": rng.random((n, 4, 1, 1), dtype=np.float32)}


def test_get_batch_equals_the_arrays_in_any_order(arrays, tmp_path):
    path = save_arrays(tmp_path / "ds", arrays["image"], arrays["label"], latent_mean=arrays["latent_mean"],
                       latent_std=arrays["latent_std"], chunk_size=8, class_names=list("abcde"))
    ds = open_dataset(path)
    assert len(ds) == 37 and ds.manifest["shards"]["counts"] == [8, 8, 8, 8, 5]
    assert ds.keys == ["image", "label", "latent_mean", "latent_std"] and ds.has_latents
    assert ds.class_names == list("abcde") and ds.num_classes == 5 and ds.resolution == 8 and ds.channels == 3
    for idx in (np.array([36, 0, 8, 7, 7, 20]), np.arange(37)[::-1], np.array([3, 4]), np.array([], np.int64)):
        batch = ds.get_batch(idx)
        for key, value in arrays.items():
            assert np.array_equal(batch[key], value[idx]), key
            assert batch[key].dtype == (np.int64 if key == "label" else value.dtype)
    assert list(ds.get_batch([1], keys=["label"])) == ["label"]
    with pytest.raises(KeyError, match="tokens:x"):
        ds.get_batch([1], keys=["tokens:x"])
    with pytest.raises(IndexError):
        ds.get_batch([37])
    with pytest.raises(IndexError):
        ds.get_batch([-1])


def test_loader_over_a_prepared_dataset_matches_memory(arrays, tmp_path):
    path = save_arrays(tmp_path / "ds", arrays["image"], arrays["label"], chunk_size=8)
    disk = BatchLoader(open_dataset(path), 6, seed=3)
    memory = BatchLoader(ArrayDataset(arrays["image"], arrays["label"]), 6, seed=3)
    threads = BatchLoader(open_dataset(path), 6, seed=3, num_workers=2, keys=["image", "label"])
    for _ in range(20):   # crosses epoch boundaries (6 batches per epoch), also while threads prefetch
        a, b, c = next(disk), next(memory), next(threads)
        assert isinstance(a["image"], torch.Tensor)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        assert torch.equal(a["image"], c["image"]) and torch.equal(a["label"], c["label"])
    threads.close()


def test_incomplete_or_foreign_folders_are_refused(arrays, tmp_path):
    with pytest.raises(DataError, match="not a prepared dataset"):
        open_dataset(tmp_path)
    path = save_arrays(tmp_path / "ds", arrays["image"], arrays["label"])
    manifest_path = os.path.join(path, "manifest.json")
    manifest = json.load(open(manifest_path))
    json.dump({**manifest, "format_version": 99}, open(manifest_path, "w"))
    with pytest.raises(DataError, match="version 99"):
        open_dataset(path)
    open(manifest_path, "w").write("{ truncated")
    with pytest.raises(DataError, match="not valid JSON"):
        open_dataset(path)
    with pytest.raises(DataError, match="not empty"):
        save_arrays(path, arrays["image"], arrays["label"])


def test_shard_shape_mismatch_is_reported(arrays, tmp_path):
    path = save_arrays(tmp_path / "ds", arrays["image"], arrays["label"], chunk_size=8)
    np.save(os.path.join(path, "image", "000001.npy"), arrays["image"][:7])
    with pytest.raises(DataError, match="image/000001.npy: shape"):
        open_dataset(path).get_batch([9])
