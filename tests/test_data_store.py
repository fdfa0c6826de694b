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


def test_both_datasets_implement_the_dataset_protocol_alike(arrays, tmp_path):
    """The members a dataset is read through (``repa.data.Dataset``) agree between a folder and the same arrays."""
    import typing

    from repa.data import Dataset
    path = save_arrays(tmp_path / "ds", arrays["image"], arrays["label"], latent_mean=arrays["latent_mean"],
                       latent_std=arrays["latent_std"], chunk_size=8)
    disk = open_dataset(path)
    memory = ArrayDataset(arrays["image"], arrays["label"], num_classes=disk.num_classes,
                          latent_mean=arrays["latent_mean"], latent_std=arrays["latent_std"])
    members = set(typing.get_type_hints(Dataset)) | {"__len__", "get_batch", "array_shape", "token_cache_key"}
    for ds in (disk, memory):
        assert isinstance(ds, Dataset) and Dataset in type(ds).__mro__                 # declared, not duck-typed
        assert all(hasattr(ds, name) for name in members)
    for name in ("resolution", "channels", "num_classes", "has_latents", "class_names"):
        assert getattr(disk, name) == getattr(memory, name), name
    assert len(disk) == len(memory) == 37
    assert np.array_equal(disk.labels, memory.labels)
    assert disk.path == str(path) and memory.path is None
    for key, shape in (("image", (3, 8, 8)), ("label", ()), ("latent_mean", (4, 1, 1)), ("tokens:x", None)):
        assert disk.array_shape(key) == memory.array_shape(key) == shape, key
    assert disk.token_cache_key("enc", 8, 2) is None and memory.token_cache_key("enc", 8, 2) is None


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


def test_a_dataset_is_checked_against_the_model_through_the_protocol(arrays, tmp_path):
    """``repa.data.checks.check_dataset_for_model`` reads latents' shapes with ``array_shape`` (folder or memory)."""
    import dataclasses

    from repa.config import ConfigError
    from repa.data.checks import check_dataset_for_model
    from tests.conftest import tiny_model_config, tiny_train_config
    latents = np.zeros((37, 4, 2, 2), np.float32)
    path = save_arrays(tmp_path / "ds", arrays["image"], arrays["label"], latent_mean=latents, latent_std=latents + 1,
                       chunk_size=8)
    memory = ArrayDataset(arrays["image"], arrays["label"], latent_mean=latents, latent_std=latents + 1)
    cfg = tiny_train_config(tmp_path / "run", model=tiny_model_config(space="latent", in_channels=4, input_size=2,
                                                                        num_classes=5))
    for ds in (open_dataset(path), memory):
        check_dataset_for_model(cfg, ds)
        bigger = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, input_size=4))
        with pytest.raises(ConfigError, match=r"latents of shape \(4, 2, 2\).*--model.input-size 2"):
            check_dataset_for_model(bigger, ds)
    with pytest.raises(ConfigError, match="the dataset has no VAE latents"):
        check_dataset_for_model(cfg, ArrayDataset(arrays["image"], arrays["label"]))
