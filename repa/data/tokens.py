"""Encoder-token caches: pay the frozen teacher once per image instead of once per training step.

A cache of dataset ``D`` for encoder ``E`` lives in ``D/tokens/<name>/`` (one float16 shard (n_k, T, E) per image
shard) and is described by ``D/tokens/<name>.json``, written last; ``<name>`` encodes encoder, resolution and token
grid (``repa.data.store.token_cache_name``). The JSON also records a digest of the images it was computed from, so a
cache never outlives the images. Training asks ``dataset.token_cache_key(encoder, resolution, token_grid)``.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from repa.data import store
from repa.data.store import PROGRESS, TOKENS, DataError, open_dataset, shard_path, write_json, write_npy

TOKEN_FORMAT_VERSION = 1


def encoder_precision(encoder) -> str:
    """``fp32``, or the autocast dtype the encoder's backbone runs in (``bfloat16``: what ``repa prepare`` and the
    default job use by default; float16 storage keeps about the same digits)."""
    dtype = getattr(encoder, "autocast_dtype", None)
    return "fp32" if dtype is None else str(dtype).removeprefix("torch.")


BATCH_PIXELS = 500 * 112 * 112   # the default job's token batches: 500 images, seen by the encoder at 112 px


def default_batch_size(encoder) -> int:
    """Images per encoder batch: the default job's pixels per batch at the encoder's input side (500 at 112 px,
    125 at 224 px, 31 at 448 px), so memory stays bounded as the input grows."""
    side = getattr(encoder, "input_size", None) or getattr(encoder, "resolution", None) or 112
    return max(1, BATCH_PIXELS // side ** 2)


def _still_valid(old: dict, description: dict, counts: list) -> bool:
    """An existing cache serves the request: same encoder, weights, images, grid; an fp32 cache (also one written
    before the precision was recorded) serves a reduced-precision request too, not the other way round."""
    rest = [k for k in description if k != "precision"]
    return ({k: old.get(k) for k in rest} == {k: description[k] for k in rest} and old["shards"]["counts"] == counts
            and old.get("precision", "fp32") in ("fp32", description["precision"]))


def _encode_shard(encoder, images: np.ndarray, batch_size: int, bar=None) -> np.ndarray:
    """(n, C, H, W) uint8 -> (n, T, E) float16, checking the Encoder contract on the way."""
    import torch

    param = next(encoder.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    num_tokens, dim = encoder.token_grid ** 2, encoder.embed_dim
    out = np.zeros((len(images), num_tokens, dim), np.float16)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.array(images[start:start + batch_size])).to(device)
            tokens = encoder(batch)                                                   # (B, T, E)
            if tuple(tokens.shape) != (len(batch), num_tokens, dim):
                raise DataError(f"encoder {encoder.name!r} returned tokens of shape {tuple(tokens.shape)}, expected "
                                f"({len(batch)}, {num_tokens}, {dim}) from its token_grid and embed_dim")
            out[start:start + len(batch)] = tokens.float().cpu().numpy().astype(np.float16)
            if bar is not None:
                bar.update(len(batch))
    return out


def build_token_cache(dataset_dir: str, encoder, *, weights: str | None = None, batch_size: int | None = None,
                      rank: int | None = None, world_size: int | None = None, progress: bool = True,
                      _fail_after_chunks: int | None = None) -> str:
    """Compute and store the tokens of every image of a prepared dataset (resumable, splits across ranks).

    Args:
        dataset_dir: a complete prepared dataset.
        encoder: a ``repa.encoders`` Encoder (``.name``, ``.token_grid``, ``.embed_dim``; uint8 images at the
            dataset's resolution -> (B, token_grid**2, E)), already on its device.
        weights: the weights the encoder was loaded from (recorded in the cache description).
        batch_size: encoder batch size (default ``default_batch_size(encoder)``).
        rank, world_size: this process's share of the shards (default from the torchrun environment).
        progress: progress bar on rank 0.
        _fail_after_chunks: test hook: raise after this many shards in this call.
    Returns:
        the batch key ``"tokens:<name>"`` (rank 0 returns once the description is written).
    """
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    ds = open_dataset(dataset_dir)
    batch_size = batch_size or default_batch_size(encoder)
    encoder_resolution = getattr(encoder, "resolution", None)
    if encoder_resolution is not None and encoder_resolution != ds.resolution:
        raise DataError(f"encoder {encoder.name!r} was built for {encoder_resolution} px images but the dataset "
                        f"{ds.path} holds {ds.resolution} px images; load it with resolution={ds.resolution}")
    name = store.token_cache_name(encoder.name, ds.resolution, encoder.token_grid)
    counts = ds.manifest["shards"]["counts"]
    description = {"format": store.TOKEN_FORMAT, "format_version": TOKEN_FORMAT_VERSION, "key": name,
                   "encoder": encoder.name, "resolution": ds.resolution, "token_grid": encoder.token_grid,
                   "num_tokens": encoder.token_grid ** 2, "embed_dim": encoder.embed_dim, "dtype": "float16",
                   "weights": weights, "images_sha256": store.images_digest(ds.manifest),
                   "precision": encoder_precision(encoder)}
    meta_path = os.path.join(ds.path, TOKENS, name + ".json")
    if os.path.isfile(meta_path):
        old = store.read_json(meta_path)
        if _still_valid(old, description, counts):
            return f"tokens:{name}"
        if rank == 0:
            os.remove(meta_path)  # stale (other images or weights): rebuilt below
    work = os.path.join(ds.path, PROGRESS, f"tokens_{name}")
    plan_path = os.path.join(work, "plan.json")
    if rank == 0:
        if os.path.isfile(plan_path) and store.read_json(plan_path) != description:
            shutil.rmtree(work)       # an unfinished cache of other images or weights: start again
        if not os.path.isfile(plan_path):
            write_json(plan_path, description)
    else:
        while not (os.path.isfile(plan_path) and store.read_json(plan_path) == description):
            time.sleep(1.0)

    def marker(k: int) -> str:
        return os.path.join(work, f"{k:06d}.json")

    from tqdm.auto import tqdm
    done = 0
    todo = [k for k in range(len(counts)) if k % world_size == rank and not os.path.isfile(marker(k))]
    bar = tqdm(total=sum(counts[k] for k in todo), desc=f"tokens {name}", unit="img",
               disable=not progress or rank != 0)
    for k in todo:
        images = np.load(os.path.join(ds.path, shard_path("image", k)), mmap_mode="r")
        digest = write_npy(os.path.join(ds.path, shard_path(f"{TOKENS}/{name}", k)),
                           _encode_shard(encoder, images, batch_size, bar))
        write_json(marker(k), {"sha256": digest})
        done += 1
        if _fail_after_chunks is not None and done >= _fail_after_chunks:
            raise RuntimeError(f"injected failure after {done} shard(s) (test hook)")
    bar.close()
    if rank != 0:
        return f"tokens:{name}"
    while not all(os.path.isfile(marker(k)) for k in range(len(counts))):
        time.sleep(5.0)
    hashes = []
    for k in range(len(counts)):
        with open(marker(k), encoding="utf-8") as f:
            hashes.append(json.load(f)["sha256"])
    write_json(meta_path, {**description, "shards": {"counts": counts, "sha256": hashes},
                           "versions": {"numpy": np.__version__}})
    shutil.rmtree(work, ignore_errors=True)
    if os.path.isdir(os.path.join(ds.path, PROGRESS)) and not os.listdir(os.path.join(ds.path, PROGRESS)):
        os.rmdir(os.path.join(ds.path, PROGRESS))
    return f"tokens:{name}"
