"""Captioned datasets from the raw MS-COCO 2014 layout: an image folder (``train2014/``) and its captions
(``annotations/captions_train2014.json``), prepared like any folder (ADM crop, SD-VAE latents, token caches) plus
every caption's text-encoder tokens and the empty caption's (U-ViT's MS-COCO features, thu-ml/U-ViT
``scripts/extract_mscoco_feature.py``, which the REPA reference trains from; here in this project's store).

Items are the images that have captions, sorted by file name (COCO's names carry the zero-padded image id, so this
is U-ViT's order by image id); an item's captions keep the order of the annotation file. The caption store lives in
the dataset folder, described by ``captions/meta.json`` (written last)::

    captions/context/000000.npy    float32 or float16 (m_k, L, D): the captions of image shard k, item after item
    captions/count/000000.npy      int64 (n_k,): captions per item of shard k
    captions/empty_context.npy     float32 (L, D): the empty caption's tokens
    captions/strings.json          {"captions": [[str, ...], ...]}: the caption strings, one list per item

``repa.data.store.open_dataset`` then returns a ``CaptionedDataset`` (a ``repa.data.protocol.TextDataset``).
Building is resumable (a marker per shard) and split across ranks like the token caches.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from repa.data import store
from repa.data.sources import SourceListing, _is_image
from repa.data.store import CAPTIONS, PROGRESS, DataError, shard_path, write_json, write_npy
from repa.utils import sha256_file

CAPTION_FORMAT, CAPTION_FORMAT_VERSION = "repa-captions", 1
CONTEXT_DTYPES = ("float32", "float16")


def read_coco_captions(annotations: str) -> dict[str, list[str]]:
    """file name -> its captions (the order of the annotation file), from a COCO ``captions_*.json``."""
    if not os.path.isfile(annotations):
        raise FileNotFoundError(f"caption file {annotations!r} does not exist; give MS-COCO's "
                                "annotations/captions_train2014.json (or captions_val2014.json)")
    try:
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
        names = {int(image["id"]): str(image["file_name"]) for image in data["images"]}
        captions: dict[str, list[str]] = {}
        for ann in data["annotations"]:
            captions.setdefault(names[int(ann["image_id"])], []).append(str(ann["caption"]).strip())
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{annotations}: not a COCO captions file ({type(exc).__name__}: {exc}); it must hold "
                        "'images' (id, file_name) and 'annotations' (image_id, caption)") from None
    return captions


def list_coco(images: str, annotations: str, split: str | None = None) -> SourceListing:
    """The images of folder ``images`` (``split`` a sub-folder of it) that have captions, sorted by file name."""
    root = os.path.abspath(os.path.expanduser(os.path.join(images, split) if split else images))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist (give MS-COCO's train2014/ or val2014/)")
    captions = read_coco_captions(annotations)
    files = sorted(f for f in os.listdir(root) if _is_image(f))
    refs = tuple(f for f in files if f in captions)
    if not refs:
        raise DataError(f"no image of {root!r} has a caption in {annotations} (file names must match the "
                        "'file_name' entries)")
    return SourceListing(kind="folder", root=root, class_names=(), refs=refs, labels=np.zeros(len(refs), np.int64),
                         split=split, ignored=tuple(f for f in files if f not in captions),
                         extra={"captions": {"path": os.path.abspath(annotations),
                                             "sha256": sha256_file(annotations)}})


def build_caption_cache(dataset_dir: str, annotations: str, encoder, *, dtype: str = "float32",
                        batch_size: int = 64, rank: int | None = None, world_size: int | None = None,
                        progress: bool = True, _fail_after_chunks: int | None = None) -> None:
    """Encode every caption of every item of a prepared dataset, and the empty caption (resumable, by ranks).

    Args:
        dataset_dir: a complete prepared dataset whose ``files.txt`` names COCO images.
        annotations: the COCO captions file.
        encoder: a ``repa.text_encoders.TextEncoder`` (``source``, ``context_length``, ``width``, ``encode``).
        dtype: storage dtype of the caption tokens (``float32``: U-ViT's features as they are).
    """
    if dtype not in CONTEXT_DTYPES:
        raise DataError(f"caption token dtype must be one of {CONTEXT_DTYPES}, got {dtype!r}")
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    ds = store.PreparedDataset(os.path.abspath(dataset_dir), store.open_manifest(dataset_dir))
    captions = read_coco_captions(annotations)
    with open(os.path.join(ds.path, store.FILES), encoding="utf-8") as f:
        refs = [line.rstrip("\n").split("#", 1)[0] for line in f]          # flip copies share their captions
    missing = [r for r in refs if os.path.basename(r) not in captions]
    if missing:
        raise DataError(f"{len(missing)} item(s) of {ds.path} have no caption in {annotations} (e.g. {missing[0]}); "
                        "give the captions file of the images that were prepared")
    strings = [captions[os.path.basename(r)] for r in refs]
    counts = ds.manifest["shards"]["counts"]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    plan = {"format": CAPTION_FORMAT, "format_version": CAPTION_FORMAT_VERSION, "text_encoder": str(encoder.source),
            "context_length": encoder.context_length, "width": encoder.width, "dtype": dtype,
            "images_sha256": store.images_digest(ds.manifest), "annotations_sha256": sha256_file(annotations),
            "counts": counts}
    meta_path = os.path.join(ds.path, CAPTIONS, "meta.json")
    if os.path.isfile(meta_path) and {k: store.read_json(meta_path).get(k) for k in plan} == plan:
        return
    work = os.path.join(ds.path, PROGRESS, "captions")
    plan_path = os.path.join(work, "plan.json")
    if rank == 0:
        if os.path.isfile(meta_path):
            os.remove(meta_path)            # stale (other images, captions or encoder): rebuilt below
        if os.path.isfile(plan_path) and store.read_json(plan_path) != plan:
            shutil.rmtree(work)
        if not os.path.isfile(plan_path):
            write_json(plan_path, plan)
    else:
        while not (os.path.isfile(plan_path) and store.read_json(plan_path) == plan):
            time.sleep(1.0)
    marker = lambda k: os.path.join(work, f"{k:06d}.json")      # noqa: E731
    from tqdm.auto import tqdm
    todo = [k for k in range(len(counts)) if k % world_size == rank and not os.path.isfile(marker(k))]
    done = 0
    for k in tqdm(todo, desc="caption tokens", unit="shard", disable=not progress or rank != 0):
        items = strings[starts[k]:starts[k + 1]]
        tokens = encoder.encode([c for item in items for c in item], batch_size=batch_size).astype(dtype)
        write_json(marker(k), {
            "captions": len(tokens),
            "context": write_npy(os.path.join(ds.path, shard_path(f"{CAPTIONS}/context", k)), tokens),
            "count": write_npy(os.path.join(ds.path, shard_path(f"{CAPTIONS}/count", k)),
                               np.array([len(item) for item in items], np.int64))})
        done += 1
        if _fail_after_chunks is not None and done >= _fail_after_chunks:
            raise RuntimeError(f"injected failure after {done} shard(s) (test hook)")
    if rank != 0:
        return
    while not all(os.path.isfile(marker(k)) for k in range(len(counts))):
        time.sleep(5.0)
    shards = [store.read_json(marker(k)) for k in range(len(counts))]
    empty = write_npy(os.path.join(ds.path, CAPTIONS, "empty_context.npy"), encoder.empty_context().astype(np.float32))
    text = store.write_json(os.path.join(ds.path, CAPTIONS, "strings.json"), {"captions": strings})
    write_json(meta_path, {**plan, "shards": {"captions": [s["captions"] for s in shards],
                                              "context_sha256": [s["context"] for s in shards],
                                              "count_sha256": [s["count"] for s in shards]},
                           "empty_sha256": empty, "strings_sha256": text})
    shutil.rmtree(work, ignore_errors=True)
    if os.path.isdir(os.path.join(ds.path, PROGRESS)) and not os.listdir(os.path.join(ds.path, PROGRESS)):
        os.rmdir(os.path.join(ds.path, PROGRESS))


__all__ = ["CONTEXT_DTYPES", "build_caption_cache", "list_coco", "read_coco_captions"]
