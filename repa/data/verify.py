"""``repa prepare --verify DIR``: check a prepared dataset against its manifest."""
from __future__ import annotations

import os

import numpy as np

from repa.data import store
from repa.data.store import TOKENS, shard_path
from repa.utils import sha256_file


def _check_shard(root: str, field: str, k: int, count: int, dtype: str, item_shape, digest: str | None,
                 check_hashes: bool, problems: list[str]) -> None:
    rel = shard_path(field, k)
    path = os.path.join(root, rel)
    if not os.path.isfile(path):
        problems.append(f"{rel}: missing")
        return
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        problems.append(f"{rel}: unreadable ({exc})")
        return
    expected = (count, *item_shape)
    if arr.shape != expected or arr.dtype != np.dtype(dtype):
        problems.append(f"{rel}: shape {arr.shape} {arr.dtype}, expected {expected} {dtype}")
    del arr
    if check_hashes and digest is not None and sha256_file(path) != digest:
        problems.append(f"{rel}: sha256 differs from the manifest (the file was modified or is corrupt)")


def verify_dataset(path: str | os.PathLike, *, check_hashes: bool = True) -> list[str]:
    """Re-check a dataset: manifest, shard shapes and dtypes, counts, sha256 of every file, labels, token caches;
    for a reference folder (``repa.data.layouts``) every file's shape (``check_hashes``: decode every image).

    Args:
        path: dataset directory.
        check_hashes: re-hash every file (reads the whole dataset); False checks only headers and counts.
    Returns:
        a list of problems, empty when the dataset is intact.
    """
    root = os.path.abspath(os.fspath(path))
    from repa.data import layouts
    if layouts.detect_layout(root) is not None:            # a reference folder: every file against the first
        try:
            return layouts.open_folder(root).scan(decode=check_hashes)
        except store.DataError as exc:
            return [str(exc)]
    try:
        m = store.open_manifest(root)
    except (FileNotFoundError, store.DataError) as exc:
        return [str(exc)]
    problems: list[str] = []
    counts = m["shards"]["counts"]
    if sum(counts) != m["num_items"]:
        problems.append(f"manifest: shard counts add up to {sum(counts)}, num_items is {m['num_items']}")
    for field, spec in m["arrays"].items():
        if len(spec["sha256"]) != len(counts):
            problems.append(f"manifest: {field} lists {len(spec['sha256'])} shards, expected {len(counts)}")
            continue
        for k, count in enumerate(counts):
            _check_shard(root, field, k, count, spec["dtype"], spec["item_shape"], spec["sha256"][k],
                         check_hashes, problems)
    if not problems:
        labels = store.open_dataset(root).labels
        if len(labels) and (labels.min() < 0 or labels.max() >= max(m["num_classes"], 1)):   # 0: captioned
            problems.append(f"labels outside 0..{m['num_classes'] - 1}: {labels.min()}..{labels.max()}")
    for name, digest in m["files"].items():
        file_path = os.path.join(root, name)
        if not os.path.isfile(file_path):
            problems.append(f"{name}: missing")
        elif check_hashes and sha256_file(file_path) != digest:
            problems.append(f"{name}: sha256 differs from the manifest")
    if os.path.isfile(os.path.join(root, store.FILES)):
        with open(os.path.join(root, store.FILES), encoding="utf-8") as f:
            n_refs = sum(1 for _ in f)
        if n_refs != m["num_items"]:
            problems.append(f"{store.FILES}: {n_refs} lines for {m['num_items']} items")
    meta_path = os.path.join(root, store.CAPTIONS, "meta.json")
    if os.path.isfile(meta_path):
        meta = store.read_json(meta_path)
        for k, count in enumerate(counts):
            _check_shard(root, f"{store.CAPTIONS}/count", k, count, "int64", (), meta["shards"]["count_sha256"][k],
                         check_hashes, problems)
            _check_shard(root, f"{store.CAPTIONS}/context", k, meta["shards"]["captions"][k], meta["dtype"],
                         (meta["context_length"], meta["width"]), meta["shards"]["context_sha256"][k], check_hashes,
                         problems)
        for name, digest in (("empty_context.npy", meta["empty_sha256"]), ("strings.json", meta["strings_sha256"])):
            file_path = os.path.join(root, store.CAPTIONS, name)
            if not os.path.isfile(file_path) or (check_hashes and sha256_file(file_path) != digest):
                problems.append(f"{store.CAPTIONS}/{name}: missing or its sha256 differs from captions/meta.json")
    tokens_dir = os.path.join(root, TOKENS)
    for fname in sorted(os.listdir(tokens_dir)) if os.path.isdir(tokens_dir) else []:
        if not fname.endswith(".json"):
            continue
        meta = store.read_json(os.path.join(tokens_dir, fname))
        name = meta["key"]
        if meta["images_sha256"] != store.images_digest(m) or meta["shards"]["counts"] != counts:
            problems.append(f"token cache {name}: computed from other images than the ones stored; rebuild it")
            continue
        for k, count in enumerate(counts):
            _check_shard(root, f"{TOKENS}/{name}", k, count, meta["dtype"], (meta["num_tokens"], meta["embed_dim"]),
                         meta["shards"]["sha256"][k], check_hashes, problems)
    return problems
