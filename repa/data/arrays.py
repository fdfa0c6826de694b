"""Write arrays that are already decoded (in memory or memory-mapped) as a prepared dataset directory."""
from __future__ import annotations

import os
import shutil

import numpy as np

from repa.data import store
from repa.data.store import DataError, shard_path, write_json, write_npy, write_text


def save_arrays(out: str | os.PathLike, images, labels, *, class_names=None, latent_mean=None, latent_std=None,
                chunk_size: int | None = None, source: str = "arrays", overwrite: bool = False) -> str:
    """Store images (and optional latent moments) in the dataset format of ``repa prepare``.

    Args:
        out: output folder (must not hold anything unless ``overwrite``).
        images: uint8 (N, C, H, W) array-like; only slices ``images[a:b]`` are read, so a lazy object works.
        labels: int (N,).
        class_names: names indexed by label (default "0", "1", ...).
        latent_mean, latent_std: optional (N, 4, h, w) float32/float16 array-likes (sliced like ``images``).
        chunk_size: items per shard (default about 64 MiB of images).
        source: free-form description stored in the manifest.
        overwrite: replace an existing folder.
    Returns:
        ``out`` (absolute), a dataset ``open_dataset`` reads.
    """
    from repa.data.prepare import _versions, default_chunk_size

    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and os.listdir(out):
        if not overwrite:
            raise DataError(f"output folder {out!r} is not empty; pass overwrite=True to replace it")
        shutil.rmtree(out)
    labels = np.asarray(labels, dtype=np.int64)
    n, c, h, w = images.shape
    if n == 0 or len(labels) != n or h != w or c not in (1, 3):
        raise DataError(f"images must be (N, 1|3, S, S) with N labels; got {tuple(images.shape)} and {labels.shape}")
    num_classes = int(labels.max()) + 1 if class_names is None else len(class_names)
    class_names = [str(i) for i in range(num_classes)] if class_names is None else list(class_names)
    chunk_size = chunk_size or default_chunk_size(c * h * w)
    fields = {"image": images}
    if latent_mean is not None:
        fields.update(latent_mean=latent_mean, latent_std=latent_std)
    hashes: dict[str, list[str]] = {name: [] for name in ["label", *fields]}
    counts = []
    for k, start in enumerate(range(0, n, chunk_size)):
        stop = min(start + chunk_size, n)
        counts.append(stop - start)
        hashes["label"].append(write_npy(os.path.join(out, shard_path("label", k)), labels[start:stop]))
        for name, arr in fields.items():
            hashes[name].append(write_npy(os.path.join(out, shard_path(name, k)), np.asarray(arr[start:stop])))
    arrays = {"image": {"dtype": "uint8", "item_shape": [c, h, w], "sha256": hashes["image"]},
              "label": {"dtype": "int64", "item_shape": [], "sha256": hashes["label"]}}
    latents = None
    if latent_mean is not None:
        from repa.autoencoder import LATENT_SCALE
        for name in store.LATENT_FIELDS:
            arrays[name] = {"dtype": str(np.dtype(fields[name].dtype)), "item_shape": list(fields[name].shape[1:]),
                            "sha256": hashes[name]}
        latents = {"vae": None, "dtype": arrays["latent_mean"]["dtype"], "scale": LATENT_SCALE,
                   "meaning": "AutoencoderKL posterior mean and std; train on (mean + std * eps) * scale"}
    files = {store.FILES: write_text(os.path.join(out, store.FILES), "".join(f"{i}\n" for i in range(n))),
             store.SKIPPED: write_text(os.path.join(out, store.SKIPPED), ""),
             store.WARNINGS: write_text(os.path.join(out, store.WARNINGS), "")}
    manifest = {
        "format": store.FORMAT, "format_version": store.FORMAT_VERSION, "num_items": n,
        "num_classes": num_classes, "class_names": class_names, "resolution": h, "channels": c,
        "source": {"kind": "arrays", "description": source, "num_files": n},
        "transform": {"crop": "none", "resolution": None, "hflip_copies": False},
        "shards": {"chunk_size": chunk_size, "counts": counts}, "arrays": arrays, "latents": latents,
        "files": files, "report": {"class_counts": np.bincount(labels, minlength=num_classes).tolist()},
        "plan": None, "versions": _versions(with_torch=False),
    }
    write_json(os.path.join(out, store.MANIFEST), manifest)
    return out
