"""``repa prepare``: turn a source into a dataset directory (layout in ``repa.data.store``), resumably.

The listed items are cut into fixed chunks; chunk k becomes shard k of every array. Worker processes decode and
crop chunks; the main process adds VAE latents per chunk. Each finished chunk leaves a marker in ``.progress/``,
so a rerun of the same command redoes only unfinished chunks and gives the bytes an uninterrupted run gives. Under
``torchrun`` rank r takes the chunks k with k % WORLD_SIZE == r; rank 0 waits for all markers, then writes
``files.txt``, ``skipped.txt``, ``warnings.txt`` and, last, ``manifest.json``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter

import numpy as np

from repa.data import store
from repa.data.sources import SourceListing, list_source, open_item, select_items
from repa.data.store import PROGRESS, DataError, shard_path, write_json, write_npy, write_text
from repa.data.transforms import transform_image
from repa.runlock import LOCK_FILE, claim_folder
from repa.utils import library_versions

log = logging.getLogger("repa.data")

SMALL_POLICIES = ("upscale", "skip")
LATENT_DTYPES = ("float32", "float16")


# ---- the plan: everything the stored bytes depend on -------------------------------------------------------------

MAX_RESOLUTION = 4096          # 48 MiB per RGB image; larger sides are typos, not datasets


def default_chunk_size(item_bytes: int) -> int:
    """About 64 MiB of images per chunk, a multiple of 64 items, between 64 and 65536."""
    return int(min(65536, max(64, ((64 << 20) // max(item_bytes, 1)) // 64 * 64)))


def _listing_digest(listing: SourceListing) -> str:
    digest = hashlib.sha256("\n".join(listing.class_names).encode())
    for ref, label in zip(listing.refs, listing.labels.tolist()):
        digest.update(f"{ref}\t{label}\n".encode())
    return digest.hexdigest()


def make_plan(listing: SourceListing, *, resolution: int | None, channels: int, hflip: bool, small: str,
              chunk_size: int | None, latents: dict | None) -> dict:
    """The JSON plan of a preparation; a resumed run must produce the identical plan."""
    if small not in SMALL_POLICIES:
        raise DataError(f"small-image policy must be one of {SMALL_POLICIES}, got {small!r}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    side = resolution or listing.native_size
    if side is None:
        raise DataError(f"{listing.root}: images of a folder have different sizes; give --resolution (e.g. 256)")
    if resolution is not None and not 8 <= resolution <= MAX_RESOLUTION:
        raise DataError(f"resolution must be in 8..{MAX_RESOLUTION} px, got {resolution} (one RGB image of that side "
                        f"is {3 * resolution ** 2 / 2 ** 30:.1f} GiB)")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise DataError(f"--chunk-size must be a positive number of items, got {chunk_size}")
    if latents is not None and (channels != 3 or side % 8):
        raise DataError(f"VAE latents need RGB images (channels 3) with a side divisible by 8; got channels "
                         f"{channels}, side {side}")
    chunk_size = chunk_size or default_chunk_size(channels * side * side)
    n = len(listing.refs)
    subset = {"max_items": listing.extra["max_items"]} if "max_items" in listing.extra else {}   # only when cut
    return {**subset, "source": listing.describe(), "class_names": list(listing.class_names),
            "listing_sha256": _listing_digest(listing), "resolution": resolution, "side": side,
            "channels": channels, "hflip": hflip, "small": small, "chunk_size": chunk_size,
            "num_chunks": (n + chunk_size - 1) // chunk_size, "latents": latents}


def _check_same_plan(old: dict, new: dict, where: str) -> None:
    diffs = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in diffs
                           if k not in ("source", "listing_sha256", "num_chunks")) or "the source listing changed"
        raise DataError(f"{where} was prepared with other settings ({detail}); rerun with the original arguments "
                        f"to finish it, use another output folder, or pass --overwrite to start again")


def _estimate_bytes(plan: dict) -> int:
    copies = 2 if plan["hflip"] else 1
    per_item = plan["channels"] * plan["side"] ** 2 + 8
    if plan["latents"]:
        per_item += 2 * 4 * (plan["side"] // 8) ** 2 * np.dtype(plan["latents"]["dtype"]).itemsize
    return per_item * copies * plan["source"]["num_files"]


# ---- one chunk of images (runs in worker processes) --------------------------------------------------------------

def _marker(out: str, stage: str, k: int) -> str:
    return os.path.join(out, PROGRESS, f"{stage}_{k:06d}.json")


def _read_marker(out: str, stage: str, k: int) -> dict | None:
    try:
        with open(_marker(out, stage, k), encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _image_chunk(task: tuple) -> dict:
    """Decode, convert and crop one chunk; write its image and label shards, then its marker."""
    out, k, listing_kind, root, split, refs, labels, plan, per_file_notes = task
    images, kept_labels, kept_refs, skipped, warnings = [], [], [], [], []
    for ref, label in zip(refs, labels):
        try:
            image = open_item(listing_kind, root, split, ref)
        except Exception as exc:  # any decoder failure means: skip this file and say why
            skipped.append([ref, f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"])
            continue
        arr, notes = transform_image(image, resolution=plan["resolution"], channels=plan["channels"],
                                     small=plan["small"])
        if arr is None:
            skipped.append([ref, notes[0]])
            continue
        if per_file_notes:   # not for IDX items: resizing or colouring them is asked for, not a file problem
            warnings.extend([ref, n] for n in notes)
        images.append(arr)
        kept_labels.append(label)
        kept_refs.append(ref)
    if plan["hflip"]:
        images += [np.ascontiguousarray(a[:, :, ::-1]) for a in images]
        kept_labels += kept_labels
        kept_refs += [r + "#hflip" for r in kept_refs]
    side, c = plan["side"], plan["channels"]
    stacked = np.stack(images) if images else np.zeros((0, c, side, side), np.uint8)   # (n, C, H, W)
    marker = {"count": len(stacked),
              "image": write_npy(os.path.join(out, shard_path("image", k)), stacked),
              "label": write_npy(os.path.join(out, shard_path("label", k)), np.asarray(kept_labels, np.int64)),
              "refs": kept_refs, "skipped": skipped, "warnings": warnings}
    write_json(_marker(out, "images", k), marker)
    return marker


# ---- latents (main process, on the device) -----------------------------------------------------------------------

def _latent_chunk(out: str, k: int, vae, dtype: str, batch_size: int) -> dict:
    """Encode shard k's images with the VAE; write latent_mean/latent_std shards, then the marker."""
    import torch

    from repa.autoencoder import encode_moments

    images = np.load(os.path.join(out, shard_path("image", k)), mmap_mode="r")        # (n, 3, H, W)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (vae.config.latent_channels, images.shape[2] // factor, images.shape[3] // factor)
    mean = np.zeros((len(images), *shape), dtype)
    std = np.zeros((len(images), *shape), dtype)
    for start in range(0, len(images), batch_size):
        m, s = encode_moments(vae, torch.from_numpy(np.array(images[start:start + batch_size])))
        mean[start:start + len(m)] = m.cpu().numpy().astype(dtype)
        std[start:start + len(s)] = s.cpu().numpy().astype(dtype)
    marker = {"latent_mean": write_npy(os.path.join(out, shard_path("latent_mean", k)), mean),
              "latent_std": write_npy(os.path.join(out, shard_path("latent_std", k)), std),
              "item_shape": list(shape)}
    write_json(_marker(out, "latents", k), marker)
    return marker


def _default_device():
    import torch
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


# ---- finishing -----------------------------------------------------------------------------------------------------

def _versions(with_torch: bool) -> dict:
    return library_versions("numpy", "pillow", "repa", *(("torch", "diffusers") if with_torch else ()))


def _wait_for_markers(out: str, plan: dict, poll_s: float = 1.0) -> None:
    stages = ["images"] + (["latents"] if plan["latents"] else [])
    announced = False
    while True:
        missing = [k for k in range(plan["num_chunks"]) for s in stages if not os.path.isfile(_marker(out, s, k))]
        if not missing:
            return
        if not announced:
            log.info("rank 0 waits for %d chunk(s) of the other ranks", len(missing))
            announced = True
        time.sleep(poll_s)


def _finalize(out: str, plan: dict, listing: SourceListing) -> dict:
    """Aggregate the chunk markers into files.txt, skipped.txt, warnings.txt and, last, manifest.json."""
    chunks = [_read_marker(out, "images", k) for k in range(plan["num_chunks"])]
    latents = [_read_marker(out, "latents", k) for k in range(plan["num_chunks"])] if plan["latents"] else []
    refs = [r for c in chunks for r in c["refs"]]
    skipped = [s for c in chunks for s in c["skipped"]]
    warnings = [w for c in chunks for w in c["warnings"]]
    if not refs:
        write_text(os.path.join(out, store.SKIPPED), "".join(f"{r}\t{m}\n" for r, m in skipped))
        raise DataError(f"every file of {listing.root!r} was skipped; see the reasons in {out}/{store.SKIPPED}")
    counts = [c["count"] for c in chunks]
    labels_all = np.concatenate([np.load(os.path.join(out, shard_path("label", k))) for k in range(len(chunks))])
    side, ch = plan["side"], plan["channels"]
    arrays = {"image": {"dtype": "uint8", "item_shape": [ch, side, side], "sha256": [c["image"] for c in chunks]},
              "label": {"dtype": "int64", "item_shape": [], "sha256": [c["label"] for c in chunks]}}
    latent_info = None
    if plan["latents"]:
        from repa.autoencoder import LATENT_SCALE
        for name in store.LATENT_FIELDS:
            arrays[name] = {"dtype": plan["latents"]["dtype"], "item_shape": latents[0]["item_shape"],
                            "sha256": [m[name] for m in latents]}
        latent_info = {**plan["latents"], "scale": LATENT_SCALE,
                       "meaning": "AutoencoderKL posterior mean and std; train on (mean + std * eps) * scale"}
    converted = Counter(n.split(":")[0] for _, n in warnings if "->" in n)
    text_hashes = {
        store.FILES: write_text(os.path.join(out, store.FILES), "".join(r + "\n" for r in refs)),
        store.SKIPPED: write_text(os.path.join(out, store.SKIPPED), "".join(f"{r}\t{m}\n" for r, m in skipped)),
        store.WARNINGS: write_text(os.path.join(out, store.WARNINGS), "".join(f"{r}\t{m}\n" for r, m in warnings)),
    }
    manifest = {
        "format": store.FORMAT, "format_version": store.FORMAT_VERSION,
        "num_items": len(refs), "num_classes": len(listing.class_names), "class_names": list(listing.class_names),
        "resolution": side, "channels": ch, "source": plan["source"],
        "transform": {"crop": "adm-center-crop" if plan["resolution"] else "none", "resolution": plan["resolution"],
                      "hflip_copies": plan["hflip"], "small_images": plan["small"],
                      "mode": "RGB" if ch == 3 else "L"},
        "shards": {"chunk_size": plan["chunk_size"], "counts": counts},
        "arrays": arrays, "latents": latent_info, "files": text_hashes,
        "report": {"num_source_files": len(listing.refs), "num_skipped": len(skipped),
                   "converted_modes": dict(sorted(converted.items())),
                   "num_upscaled": sum(n.startswith("upscaled") for _, n in warnings),
                   "empty_classes": list(listing.empty_classes),
                   "class_counts": np.bincount(labels_all, minlength=len(listing.class_names)).tolist()},
        "plan": plan, "versions": _versions(with_torch=bool(plan["latents"])),
    }
    write_json(os.path.join(out, store.MANIFEST), manifest)
    progress_dir = os.path.join(out, PROGRESS)
    for name in os.listdir(progress_dir):     # only our markers: a token cache may be under way beside them
        if name == "plan.json" or name.startswith(("images_", "latents_")):
            os.remove(os.path.join(progress_dir, name))
    if not os.listdir(progress_dir):
        os.rmdir(progress_dir)
    return manifest


def summary(manifest: dict, out: str) -> str:
    """A few human-readable lines about a finished preparation (counts, skipped, converted, upscaled)."""
    r = manifest["report"]
    source = manifest["source"]
    subset = (f", --max-items: {source['max_items']} of the source's {source['num_source_items']}, class-balanced"
              if "max_items" in source else "")
    lines = [f"prepared {manifest['num_items']} items ({manifest['channels']}x{manifest['resolution']}x"
             f"{manifest['resolution']}, {manifest['num_classes']} classes{subset}) in {out}"]
    if r["num_skipped"]:
        lines.append(f"  skipped {r['num_skipped']} file(s): reasons in {out}/{store.SKIPPED}")
    if r["converted_modes"]:
        lines.append(f"  converted {dict(r['converted_modes'])}: listed in {out}/{store.WARNINGS}")
    if r["num_upscaled"]:
        lines.append(f"  upscaled {r['num_upscaled']} image(s) smaller than the crop (--small skip drops them)")
    if r["empty_classes"]:
        lines.append(f"  empty class folder(s) kept as labels without items: {r['empty_classes']}")
    return "\n".join(lines)


# ---- the entry point ---------------------------------------------------------------------------------------------

def _markers_from_manifest(out: str, manifest: dict) -> None:
    """Recreate the image markers of a complete dataset, so that latents can be added to it by the usual path."""
    def lines(name):
        with open(os.path.join(out, name), encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    refs = lines(store.FILES)
    skipped = [line.split("\t", 1) for line in lines(store.SKIPPED)]
    warnings = [line.split("\t", 1) for line in lines(store.WARNINGS)]
    start = 0
    for k, count in enumerate(manifest["shards"]["counts"]):
        write_json(_marker(out, "images", k), {
            "count": count, "image": manifest["arrays"]["image"]["sha256"][k],
            "label": manifest["arrays"]["label"]["sha256"][k], "refs": refs[start:start + count],
            "skipped": skipped if k == 0 else [], "warnings": warnings if k == 0 else []})   # same text files
        start += count


def _has_finished_chunks(out: str) -> bool:
    progress = os.path.join(out, PROGRESS)
    return any(name.startswith(("images_", "latents_")) for name in os.listdir(progress))


def _claim_output(out: str, plan: dict, overwrite: bool, rank: int) -> dict | None:
    """Check that ``out`` can hold this plan and record it; returns the manifest when the work is already done."""
    manifest_path = os.path.join(out, store.MANIFEST)
    plan_path = os.path.join(out, PROGRESS, "plan.json")
    if rank != 0:  # rank 0 decides (and checks the folder); the others wait for its plan or the finished work
        while True:
            if os.path.isfile(plan_path):
                _check_same_plan(store.read_json(plan_path), plan, out)
                return None
            if os.path.isfile(manifest_path) and store.read_json(manifest_path).get("plan") == plan:
                return store.read_json(manifest_path)
            time.sleep(1.0)
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"output {out!r} is a file; give a folder for the dataset")
    ours = os.path.isfile(manifest_path) or os.path.isdir(os.path.join(out, PROGRESS))
    if os.path.isdir(out) and set(os.listdir(out)) - {LOCK_FILE} and not ours:
        raise DataError(f"output folder {out!r} is not empty and is not a repa dataset; choose an empty folder")
    if overwrite and ours:
        for name in os.listdir(out):     # everything but our lock
            if name != LOCK_FILE:
                target = os.path.join(out, name)
                shutil.rmtree(target) if os.path.isdir(target) and not os.path.islink(target) else os.remove(target)
    if os.path.isfile(plan_path):
        if _has_finished_chunks(out):
            _check_same_plan(store.read_json(plan_path), plan, out)
            return None
        log.info("%s: an earlier start finished no chunk; starting with the new settings", out)
        os.remove(plan_path)
    if os.path.isfile(manifest_path):
        manifest = store.read_json(manifest_path)
        old = manifest.get("plan", {})
        if old == plan:
            return manifest
        if old.get("latents") is None and plan["latents"] and {**old, "latents": None} == {**plan, "latents": None}:
            log.info("adding latents to the complete dataset %s", out)
            _markers_from_manifest(out, manifest)
            write_json(plan_path, plan)
            return None
        _check_same_plan(old, plan, out)
    existing_dir = out
    while not os.path.isdir(existing_dir):
        existing_dir = os.path.dirname(existing_dir)
    free = shutil.disk_usage(existing_dir).free
    need = _estimate_bytes(plan)
    if need > free:
        raise DataError(f"not enough disk space for {out!r}: the dataset needs about {need / 1e9:.1f} GB, "
                        f"{free / 1e9:.1f} GB are free; choose another folder or free space")
    write_json(plan_path, plan)
    return None


def prepare_dataset(source: str, out: str, *, split: str | None = None, resolution: int | None = -1,
                    channels: int | None = None, hflip: bool = False, small: str = "upscale",
                    chunk_size: int | None = None, num_workers: int | None = None, vae: str | None = None,
                    latent_dtype: str = "float32", batch_size: int = 64, device=None, overwrite: bool = False,
                    rank: int | None = None, world_size: int | None = None, progress: bool = True,
                    max_items: int | None = None, captions: str | None = None,
                    _fail_after_chunks: int | None = None) -> str:
    """Prepare (or finish preparing) a dataset directory.

    Args:
        source, split: see ``repa.data.sources.list_source``.
        out: output folder (created; must be empty, or a dataset/unfinished preparation of the same settings).
        resolution: ADM centre-crop side; -1 = default (256 for folders, the native 28 for Fashion-MNIST);
            None keeps the native size.
        channels: 3 (RGB) or 1 (greyscale); default 3 for folders, 1 for Fashion-MNIST.
        hflip: also store a horizontally flipped copy of every image (labels and latents included).
        small: images whose short side is below the crop: "upscale" (ADM, the reference) or "skip".
        chunk_size: items per chunk/shard; default about 64 MiB of images.
        num_workers: decoding processes per rank (0 = in this process); default: the CPUs of this rank.
        vae: hub id or folder of an AutoencoderKL: also store latent moments (None: no latents).
        latent_dtype: "float32" (default) or "float16" storage of the latent moments.
        batch_size: VAE batch size. device: VAE device (default cuda:LOCAL_RANK or cpu).
        overwrite: delete an existing dataset or unfinished preparation in ``out`` first.
        rank, world_size: this process's share (default from the RANK / WORLD_SIZE environment of torchrun).
        progress: show a progress bar (rank 0).
        max_items: prepare only this many items of the source (``repa.data.sources.balanced_subset``: spread
            evenly over the classes, each class's first items in the source's order); None: all.
        captions: a COCO captions file: ``source`` is then its image folder (``repa.data.captions.list_coco``).
        _fail_after_chunks: test hook: raise after this many chunks were written in this call.
    Returns:
        ``out`` (absolute). Only rank 0 returns after the manifest exists; other ranks return after their chunks.
    Raises:
        FileNotFoundError (missing source), DataError (bad output folder, settings differ from an unfinished run,
        disk full), ValueError (bad options).
    """
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    out = os.path.abspath(os.fspath(out))
    from repa.data.captions import list_coco
    listing = select_items(list_coco(source, captions, split) if captions else list_source(source, split), max_items)
    if resolution == -1:
        resolution = None if listing.native_size else 256
    channels = channels or (1 if listing.native_size else 3)
    if latent_dtype not in LATENT_DTYPES:
        raise DataError(f"latent dtype must be one of {LATENT_DTYPES}, got {latent_dtype!r}")
    latents = {"vae": vae, "dtype": latent_dtype} if vae else None
    plan = make_plan(listing, resolution=resolution, channels=channels, hflip=hflip, small=small,
                     chunk_size=chunk_size, latents=latents)
    if rank == 0:
        from repa.preflight import check_output_dir
        check_output_dir(out, "OUT")
    with claim_folder(out, "dataset", enabled=rank == 0):     # one preparation per folder (rank 0 holds it)
        return _prepare_claimed(listing, out, plan, overwrite=overwrite, rank=rank, world_size=world_size,
                                num_workers=num_workers, vae=vae, latent_dtype=latent_dtype, batch_size=batch_size,
                                device=device, progress=progress, _fail_after_chunks=_fail_after_chunks)


def _prepare_claimed(listing, out, plan, *, overwrite, rank, world_size, num_workers, vae, latent_dtype, batch_size,
                     device, progress, _fail_after_chunks) -> str:
    """The work of ``prepare_dataset`` once ``out`` is locked and the inputs are checked."""
    latents = plan["latents"]
    existing = _claim_output(out, plan, overwrite, rank)
    if existing is not None:
        log.info("%s is already complete", out)
        return out
    mine = [k for k in range(plan["num_chunks"]) if k % world_size == rank]
    cs = plan["chunk_size"]
    tasks = [(out, k, listing.kind, listing.root, listing.split, list(listing.refs[k * cs:(k + 1) * cs]),
              listing.labels[k * cs:(k + 1) * cs].tolist(), plan, listing.native_size is None)
             for k in mine if _read_marker(out, "images", k) is None]
    if num_workers is None:
        num_workers = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    pool = None
    if num_workers > 0 and len(tasks) > 1:
        import multiprocessing
        pool = multiprocessing.get_context().Pool(min(num_workers, len(tasks)))   # before any CUDA work
    try:
        results = pool.imap(_image_chunk, tasks) if pool else map(_image_chunk, tasks)
        pending = {t[1] for t in tasks}
        vae_model = None
        if latents and any(_read_marker(out, "latents", k) is None for k in mine):
            from repa.autoencoder import load_vae
            vae_model = load_vae(vae, device=device or _default_device())
        from tqdm.auto import tqdm
        written = 0
        for k in tqdm(mine, desc=f"prepare {os.path.basename(out)}", unit="chunk",
                      disable=not progress or rank != 0):
            if k in pending:
                next(results)   # chunk k (tasks are in the order of `mine`)
                written += 1
            if vae_model is not None and _read_marker(out, "latents", k) is None:
                _latent_chunk(out, k, vae_model, latent_dtype, batch_size)
            if _fail_after_chunks is not None and written >= _fail_after_chunks:
                raise RuntimeError(f"injected failure after {written} chunk(s) (test hook)")
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    if rank != 0:
        return out
    _wait_for_markers(out, plan)
    manifest = _finalize(out, plan, listing)
    r = manifest["report"]
    if r["num_skipped"] or r["converted_modes"] or r["empty_classes"]:
        log.warning("%s", summary(manifest, out).split("\n", 1)[1])
    return out
