"""Sampling at scale to the ADM ``.npz`` format (``repa sample``), reproducible and resumable.

Reproducibility: the start noise of sample ``i`` comes from a generator seeded by ``(seed, i)`` alone, its label
from ``(seed, i)`` too (``random``) or is ``i mod num_classes`` (``balanced``), and the SDE sampler gets one
generator per sample (seeded by ``(seed, i)`` as well): images do not depend on the batch size or the number of
GPUs. Noise and labels are drawn on the CPU, so they do not depend on the device either (the SDE's step noise is
drawn on the model's device for speed).

Resumption: the N samples are cut into batches of ``batch_size`` consecutive indices; ``torchrun`` rank r takes
batches r, r + W, ... Each finished batch is written atomically to ``OUT/shards/<start>-<end>.npz``; a rerun skips the
batches whose file exists. When all are there, rank 0 streams them into ``OUT/samples.npz`` (``arr_0``
(N, H, W, 3) uint8, greyscale replicated to 3 channels; ``labels`` (N,)), writes ``OUT/grid.png`` (first 64
samples, greyscale kept) and removes the shards. ``OUT/settings.json`` records everything that determines the
images; rerunning with other settings into the same folder is an error.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from repa.checkpoint import LoadedModel, as_loaded, load_model
from repa.config import INT_LIMIT, ConfigError, ModelConfig, SampleConfig
from repa.guidance import condition_for
from repa.samplers import Sampling, resolve_sampling, run_sampling
from repa.utils import atomic_write, to_uint8

NOISE_STREAM, LABEL_STREAM, SDE_STREAM, CLASS_TOKEN_STREAM = 0, 1, 2, 3
LABEL_MODES = ("random", "balanced")
GRID_SAMPLES = 64
SETTINGS_FILE, SAMPLES_FILE, GRID_FILE, SHARD_DIR = "settings.json", "samples.npz", "grid.png", "shards"


# ---- per-sample randomness -------------------------------------------------------------------------------------

def sample_seed(seed: int, index: int, stream: int = NOISE_STREAM) -> int:
    """A 64-bit seed that depends only on (seed, sample index, stream): noise, label and SDE streams differ."""
    state = np.random.SeedSequence([seed, index, stream]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def sample_noise(indices, seed: int, shape: tuple[int, ...], stream: int = NOISE_STREAM) -> torch.Tensor:
    """Start noise (B, *shape) float32 on the CPU; row b depends only on (seed, indices[b]) (and the stream: REG's
    class token starts from ``CLASS_TOKEN_STREAM``)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(sample_seed(seed, int(i), stream)))
                        for i in indices])


def sample_labels(indices, seed: int, num_classes: int, mode: str = "random") -> np.ndarray | None:
    """Class labels (B,) int64: ``random`` from (seed, i) alone, ``balanced`` = i mod num_classes; None for an
    unconditional model (``num_classes`` 0)."""
    if mode not in LABEL_MODES:
        raise ConfigError(f"labels must be one of {LABEL_MODES}, got {mode!r}")
    if num_classes == 0:
        return None
    idx = np.asarray(indices, dtype=np.int64)
    if mode == "balanced":
        return idx % num_classes
    return np.array([np.random.default_rng(sample_seed(seed, int(i), LABEL_STREAM)).integers(num_classes)
                     for i in idx], dtype=np.int64)


MAX_GRID = 10_000                # the images of one sample-grid PNG
MAX_SAMPLES = 10_000_000         # FID-50K needs 50000; beyond this a request is a typo (and would not fit a disk)


def check_request(*, num: int, seed: int, labels, batch_size: int) -> None:
    """Raise ConfigError for an invalid request (how many, which seed, which labels), before a model is loaded."""
    for name, value, low, high in (("num", num, 1, MAX_SAMPLES), ("batch_size", batch_size, 1, MAX_SAMPLES),
                                   ("seed", seed, 0, INT_LIMIT)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    if isinstance(labels, str) and labels not in LABEL_MODES:
        raise ConfigError(f"labels must be one of {LABEL_MODES} or an array of class indices, got {labels!r}")


def request_labels(cfg: ModelConfig, indices: np.ndarray, seed: int, labels) -> np.ndarray | None:
    """The class labels of samples ``indices``: from a mode (``sample_labels``) or given, checked against ``cfg``."""
    if isinstance(labels, str):
        return sample_labels(indices, seed, cfg.num_classes, labels)
    if cfg.num_classes == 0:
        raise ConfigError(f"{cfg.name} is unconditional (model.num_classes=0): it takes no labels")
    arr = np.asarray(labels).reshape(-1)
    if len(arr) != len(indices):
        raise ConfigError(f"got {len(arr)} labels for {len(indices)} images")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= cfg.num_classes):
        raise ConfigError(f"labels must lie in [0, {cfg.num_classes}) (integers), got {arr.min()}..{arr.max()}")
    return arr.astype(np.int64)


# ---- one batch: the in-process generator of every entry point ----------------------------------------------------

@torch.no_grad()
def generate_batch(loaded: LoadedModel, indices: np.ndarray, labels: np.ndarray | None, settings: Sampling, *,
                   seed: int, decode=None) -> np.ndarray:
    """uint8 (B, C, H, W) images of samples ``indices`` with class ``labels`` (None: unconditional).

    The one generator behind ``repa sample``, ``generate_images`` (the default job, previews, ``sample-grid``):
    sample i's start noise, class-token noise and step noise come from (seed, i) alone. ``decode`` maps a latent
    model's samples to uint8 images (``decoder``); pixel models need none.
    """
    cfg = loaded.config
    device = next(loaded.model.parameters()).device
    noise = sample_noise(indices, seed, (cfg.in_channels, cfg.input_size, cfg.input_size)).to(device)
    y = None if labels is None else torch.as_tensor(labels, dtype=torch.long, device=device)
    ctn = (sample_noise(indices, seed, (cfg.class_token_dim,), CLASS_TOKEN_STREAM).to(device)
           if cfg.class_token else None)       # REG: the class token's start noise, per sample like the image's
    generators = ([torch.Generator(device).manual_seed(sample_seed(seed, int(i), SDE_STREAM)) for i in indices]
                  if settings.sampler.stochastic else None)   # per sample: step noise independent of the batch
    x, _ = run_sampling(loaded, noise, y, settings, generator=generators, class_token_noise=ctn)
    if not torch.isfinite(x).all():
        first = int(indices[0])
        raise NonFiniteSamples(f"samples {first}..{int(indices[-1])} are not finite (NaN or inf) with {settings}; "
                               "lower cfg_scale, or check the checkpoint (repa eval would score garbage)")
    if cfg.space == "latent":
        if decode is None:
            raise ConfigError(f"{cfg.name} samples latents; give a VAE (vae=load_vae(...), --vae) to decode them")
        return np.asarray(decode(x).cpu())
    if decode is not None:
        raise ConfigError(f"{cfg.name} is a pixel-space model: it needs no VAE")
    return to_uint8(x).cpu().numpy()


class NonFiniteSamples(ConfigError):
    """A batch of samples came out NaN or inf: nothing is written for it."""


def generate_images(model, num: int, config: SampleConfig | None = None, *, seed: int = 0, sampler: str | None = None,
                    steps: int | None = None, cfg_scale: float | None = None,
                    guidance_interval: tuple[float, float] | None = None,
                    labels="random", batch_size: int = 64, vae=None, decode=None, start: int = 0,
                    progress: bool = False, guided_channels: int | str | None = None,
                    cls_cfg_scale: float | None = None) -> np.ndarray:
    """Generate images in-process (the default job, training previews, ``repa sample-grid``); the same images as
    ``repa sample`` for the same seed.

    Args:
        model: a ``LoadedModel`` (``repa.load_model``; its training interpolant is used) or a network with
            ``.config``, in eval mode, on its device.
        num: number of images; they are samples ``start .. start + num - 1``.
        config: the sampling settings (``repa.SampleConfig``; default ``SampleConfig()``: the papers' sampler for
            the network, 250 steps, no guidance).
        seed: base seed; sample i depends on (seed, i) only.
        sampler, steps, cfg_scale, guidance_interval, guided_channels, cls_cfg_scale: override the fields of
            ``config`` (``cls_cfg_scale``: REG networks only, the class token's guidance scale).
        labels: ``random``, ``balanced`` or an int array of ``num`` class indices (ignored: unconditional models).
        batch_size: samples per forward batch (does not change the result).
        vae: a loaded ``AutoencoderKL`` (``repa.autoencoder.load_vae``) or a hub id / folder; latent models only.
        decode: instead of ``vae``, any function latents -> uint8 images (the default job's own VAE).
    Returns:
        uint8 numpy (num, C, H, W): C = 3 for latent models, the model's channels for pixel models.
    """
    from tqdm.auto import tqdm
    check_request(num=num, seed=seed, labels=labels, batch_size=batch_size)
    overrides = dict(sampler=sampler, steps=steps, cfg_scale=cfg_scale, guidance_interval=guidance_interval,
                     guided_channels=guided_channels, cls_cfg_scale=cls_cfg_scale)
    resolve_sampling(None, config, **overrides)  # before the model
    loaded = as_loaded(model)
    settings = resolve_sampling(loaded, config, **overrides)
    decode = decode or decoder(loaded, vae)
    indices = np.arange(start, start + num)
    all_labels = request_labels(loaded.config, indices, seed, labels)
    out = []
    for b in tqdm(range(0, num, batch_size), disable=not progress, desc="sampling", unit="batch"):
        part = slice(b, b + batch_size)
        out.append(generate_batch(loaded, indices[part], None if all_labels is None else all_labels[part], settings,
                                  seed=seed, decode=decode))
    return np.concatenate(out)


def sample_grid_png(model, path, config: SampleConfig | None = None, *, num: int = 16, seed: int = 0,
                    decode=None, vae=None, **overrides) -> None:
    """Sample ``num`` images with ``generate_images`` (labels cycle through the classes) and write them as one PNG
    grid (``repa sample-grid``, training previews)."""
    from repa.visualize import image_grid, save_png
    images = generate_images(model, num, config, seed=seed, labels="balanced", decode=decode, vae=vae,
                             batch_size=num, **overrides)
    save_png(image_grid(images), path)


def write_sample_grid(checkpoint, out, config: SampleConfig | None = None, *, num: int = 16, seed: int = 0,
                      vae=None, which: str = "ema", origin: str = "auto", encoder_depth: int | None = None,
                      device: str | None = None) -> None:
    """``repa sample-grid``: ``sample_grid_png`` of the model ``load_model`` reads from ``checkpoint`` (arguments as
    there; ``device`` default CUDA when available), after checking the settings and the output file."""
    from repa.preflight import check_output_file
    from repa.runlock import clean_stale_temp_files
    if isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= MAX_GRID:
        raise ConfigError(f"--num must be an integer in 1..{MAX_GRID} (the images of one PNG), got {num!r}")
    check_request(num=1, seed=seed, labels="balanced", batch_size=1)
    resolve_sampling(None, config)                        # the settings alone, before anything is loaded
    check_output_file(out, "--out")
    clean_stale_temp_files(os.path.dirname(os.path.abspath(out)), prefix=f".{os.path.basename(out)}.tmp")
    model = load_model(checkpoint, which=which, origin=origin, encoder_depth=encoder_depth,
                       device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sample_grid_png(model, out, config, num=num, seed=seed, vae=vae)


def decoder(loaded: LoadedModel, vae):
    """None for pixel models; for latent models latents -> uint8 images through ``vae`` (a loaded AutoencoderKL,
    or a hub id / folder loaded once per process; default sd-vae-ft-ema)."""
    if loaded.config.space != "latent":
        if vae is not None:
            raise ConfigError(f"{loaded.config.name} is a pixel-space model: it needs no VAE, but vae={vae!r} was "
                              "given")
        return None
    from repa.autoencoder import DECODE_VAE, cached_vae, decode
    model = vae if vae is not None and not isinstance(vae, (str, os.PathLike)) else \
        cached_vae(vae or DECODE_VAE, next(loaded.model.parameters()).device)
    return lambda z: decode(model, z)


# ---- files -----------------------------------------------------------------------------------------------------

def _shard_file(out: Path, start: int, end: int) -> Path:
    return out / SHARD_DIR / f"{start:08d}-{end:08d}.npz"


def _write_samples_npz(path: Path, shards: list[Path], num: int) -> None:
    """Stream shards into an ADM ``.npz`` (``arr_0`` (N, H, W, 3) uint8, ``labels``) without holding all images."""
    with np.load(shards[0]) as first:
        _, c, h, w = first["images"].shape
    labels = []

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as arr:
                np.lib.format.write_array_header_1_0(arr, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                           "fortran_order": False, "shape": (num, h, w, 3)})
                for shard in shards:
                    with np.load(shard) as data:
                        images, labels_part = data["images"], data["labels"]
                    if c == 1:
                        images = np.repeat(images, 3, axis=1)
                    arr.write(np.ascontiguousarray(images.transpose(0, 2, 3, 1)).tobytes())
                    labels.append(labels_part)
            with zf.open("labels.npy", "w") as lab:
                np.lib.format.write_array(lab, np.concatenate(labels).astype(np.int64))
    atomic_write(path, write)


def sample_to_npz(checkpoint: str, out_dir: str, config: SampleConfig | None = None, *, num: int, seed: int = 0,
                  sampler: str | None = None, steps: int | None = None, cfg_scale: float | None = None,
                  guidance_interval: tuple[float, float] | None = None,
                  labels: str = "random", batch_size: int = 64, vae: str | None = None, which: str = "ema",
                  device: str | None = None, progress: bool = True, guided_channels: int | str | None = None,
                  origin: str = "auto", cls_cfg_scale: float | None = None) -> Path:
    """``repa sample``: N samples of a checkpoint into ``out_dir`` (shards, then ``samples.npz``, grid, settings).

    Launch with ``torchrun --nproc_per_node G`` to shard the work; a rerun resumes. Arguments as in
    ``generate_images``; ``which`` picks ``ema`` (default) or ``model`` weights; ``vae`` defaults to sd-vae-ft-ema;
    ``origin`` is ``repa.load_model``'s (which network a checkpoint without this project's config holds).
    Returns the path of ``samples.npz``. One process (one ``torchrun`` job) writes a folder at a time.
    """
    overrides = dict(sampler=sampler, steps=steps, cfg_scale=cfg_scale, guidance_interval=guidance_interval,
                     guided_channels=guided_channels, cls_cfg_scale=cls_cfg_scale)
    check_request(num=num, seed=seed, labels=labels, batch_size=batch_size)
    resolve_sampling(None, config, **overrides)          # the settings alone, before anything is loaded
    from repa.hub import looks_like_hub_id
    if not os.path.exists(checkpoint) and not looks_like_hub_id(str(checkpoint)):
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    from repa.preflight import check_output_dir
    from repa.runlock import claim_folder
    out = Path(out_dir)
    is_main = int(os.environ.get("RANK", 0)) == 0
    if is_main:
        check_output_dir(out_dir, "--out")
    with claim_folder(out, "sample folder", enabled=is_main):    # one writer per sample folder
        return _sample_claimed(checkpoint, out, config, overrides, num=num, seed=seed, labels=labels,
                               batch_size=batch_size, vae=vae, which=which, device=device, progress=progress,
                               origin=origin)


def _sample_claimed(checkpoint, out: Path, config, overrides, *, num, seed, labels, batch_size, vae, which, device,
                    progress, origin) -> Path:
    """The work of ``sample_to_npz`` once the arguments are checked and ``out`` is locked."""
    from tqdm.auto import tqdm
    from repa import distributed
    from repa.config import to_dict
    from repa.runlock import clean_stale_temp_files
    from repa.visualize import image_grid, save_png
    target = out / SAMPLES_FILE
    settings_path = out / SETTINGS_FILE
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    process = distributed.init(device)
    loaded = load_model(checkpoint, which=which, device=process.device, origin=origin)
    sampling = resolve_sampling(loaded, config, **overrides)
    condition_for(loaded.model).check_guidable(sampling.cfg_scale)     # before any file is written
    settings = {"checkpoint": str(Path(checkpoint).resolve()) if os.path.exists(checkpoint) else str(checkpoint),
                "which": which, "num": num, "seed": seed, **sampling.as_settings(), "labels": labels, "vae": vae}
    if sampling.guided_channels is not None or origin != "auto":   # absent when default: older files still match
        settings.update(guided_channels=sampling.guided_channels, origin=origin)
    done_any = target.is_file() or any((out / SHARD_DIR).glob("*.npz"))
    if settings_path.is_file() and done_any:          # settings without any finished batch claim nothing
        previous = json.loads(settings_path.read_text()).get("settings", {})
        changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if changed:
            raise ConfigError(f"{out} holds samples made with other settings {changed} (old, new); use another "
                              f"--out or delete the folder")
    if target.is_file():
        print(f"{target} is complete; nothing to do")
        return target
    decode = decoder(loaded, vae)
    if process.is_main:
        clean_stale_temp_files(out)                # half-written files of a killed run
        clean_stale_temp_files(out / SHARD_DIR)
        (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        record = {"settings": settings, "model": to_dict(loaded.config), "batch_size": batch_size,
                  "world_size": process.world_size}
        atomic_write(settings_path, lambda f: f.write((json.dumps(record, indent=2) + "\n").encode()))
    distributed.barrier()

    batches = [(s, min(s + batch_size, num)) for s in range(0, num, batch_size)]
    mine = [b for k, b in enumerate(batches) if k % process.world_size == process.rank]
    todo = [b for b in mine if not _shard_file(out, *b).is_file()]
    if process.is_main and len(todo) < len(mine):
        print(f"resuming: {len(mine) - len(todo)} of {len(mine)} batches of this rank are done")
    for start, end in tqdm(todo, disable=not (progress and process.is_main), desc="sampling", unit="batch"):
        indices = np.arange(start, end)
        batch_labels = sample_labels(indices, seed, loaded.config.num_classes, labels)
        images = generate_batch(loaded, indices, batch_labels, sampling, seed=seed, decode=decode)
        stored = np.full(len(indices), -1, np.int64) if batch_labels is None else batch_labels
        atomic_write(_shard_file(out, start, end),
                     lambda f: np.savez(f, images=images, labels=stored, indices=indices))
    distributed.barrier()

    if process.is_main:
        shards = [_shard_file(out, *b) for b in batches]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise RuntimeError(f"{len(missing)} shard(s) missing in {out / SHARD_DIR} (e.g. {missing[:3]}); rerun")
        grid = []
        for shard in shards:
            with np.load(shard) as data:
                grid.append(data["images"][:GRID_SAMPLES - sum(len(g) for g in grid)])
            if sum(len(g) for g in grid) >= GRID_SAMPLES:
                break
        save_png(image_grid(np.concatenate(grid)), out / GRID_FILE)
        _write_samples_npz(target, shards, num)
        for shard in shards:
            shard.unlink()
        if not any((out / SHARD_DIR).iterdir()):      # the shards are in samples.npz: no empty folder left behind
            (out / SHARD_DIR).rmdir()
        print(f"wrote {target} ({num} samples), {out / GRID_FILE}, {settings_path}")
    distributed.barrier()
    if owns_group:
        distributed.shutdown()
    return target
