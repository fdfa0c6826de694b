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

import dataclasses
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from repa.checkpoint import LoadedModel, as_loaded, load_model
from repa.config import ModelConfig, SampleConfig
from repa.utils import atomic_write, to_uint8

NOISE_STREAM, LABEL_STREAM, SDE_STREAM, CLASS_TOKEN_STREAM = 0, 1, 2, 3
STOCHASTIC_SAMPLERS = ("sde", "ddpm")      # samplers that draw noise at every step
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


def sample_labels(indices, seed: int, num_classes: int, mode: str = "random") -> np.ndarray:
    """Class labels (B,) int64: ``random`` from (seed, i) alone, ``balanced`` = i mod num_classes."""
    idx = np.asarray(indices, dtype=np.int64)
    if mode == "balanced":
        return idx % num_classes
    if mode == "random":
        return np.array([np.random.default_rng(sample_seed(seed, int(i), LABEL_STREAM)).integers(num_classes)
                         for i in idx], dtype=np.int64)
    raise ValueError(f"labels must be one of {LABEL_MODES}, got {mode!r}")


def check_sampling_args(*, num: int, seed: int, sampler: str, steps: int, cfg_scale: float,
                        guidance_interval: tuple[float, float], labels, batch_size: int) -> None:
    """Raise ValueError for any invalid sampling argument, before a model is loaded."""
    from repa.guidance import check_guidance
    from repa.samplers import SAMPLERS
    check_guidance(cfg_scale, tuple(guidance_interval))
    if sampler not in SAMPLERS and sampler != "auto":
        raise ValueError(f"unknown sampler {sampler!r}; known samplers: auto, {', '.join(SAMPLERS)}")
    for name, value, low in (("num", num, 1), ("steps", steps, 1), ("batch_size", batch_size, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(labels, str) and labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES} or an array of class indices, got {labels!r}")


def _check_model(cfg: ModelConfig, cfg_scale: float, labels) -> None:
    if cfg_scale != 1.0 and cfg.class_dropout <= 0:
        raise ValueError(f"cfg_scale={cfg_scale} needs a null class, but {cfg.name} was built without class dropout "
                         f"(model.class_dropout=0); sample with cfg_scale 1")
    if not isinstance(labels, str):
        arr = np.asarray(labels)
        if arr.size and (arr.min() < 0 or arr.max() >= cfg.num_classes):
            raise ValueError(f"labels must lie in [0, {cfg.num_classes}), got {arr.min()}..{arr.max()}")


# ---- one batch -------------------------------------------------------------------------------------------------

@torch.no_grad()
def _generate_batch(loaded: LoadedModel, indices: np.ndarray, labels: np.ndarray, *, seed: int, sampler: str, steps: int,
                    cfg_scale: float, guidance_interval, vae=None, guided_channels=None) -> np.ndarray:
    """uint8 (B, C, H, W) images of samples ``indices`` with class ``labels``."""
    from repa.samplers import sample
    cfg = loaded.config
    device = next(loaded.model.parameters()).device
    noise = sample_noise(indices, seed, (cfg.in_channels, cfg.input_size, cfg.input_size)).to(device)
    y = torch.as_tensor(labels, dtype=torch.long, device=device)
    kwargs = dict(sampler=sampler, steps=steps, cfg_scale=cfg_scale, guidance_interval=tuple(guidance_interval),
                  guided_channels=guided_channels)
    if cfg.class_token:                  # REG: the class token's start noise, per sample like the image's
        kwargs["class_token_noise"] = sample_noise(indices, seed, (cfg.class_token_dim,), CLASS_TOKEN_STREAM).to(device)
    if sampler in STOCHASTIC_SAMPLERS:   # one generator per sample: its step noise is independent of the batch
        generators = [torch.Generator(device).manual_seed(sample_seed(seed, int(i), SDE_STREAM)) for i in indices]
        x = sample(loaded, noise, y, generator=generators, **kwargs)
    else:
        x = sample(loaded, noise, y, **kwargs)
    if cfg.space == "latent":
        from repa.autoencoder import decode
        if vae is None:
            raise ValueError(f"{cfg.name} samples latents; give a VAE (vae=load_vae(...), --vae) to decode them")
        images = decode(vae, x)
    else:
        images = to_uint8(x)
    return images.cpu().numpy()


def sample_config(config: SampleConfig | None = None, *, sampler=None, steps=None, cfg_scale=None,
                  guidance_interval=None, guided_channels=None) -> SampleConfig:
    """``config`` (default ``SampleConfig()``) with the given (non-None) fields replaced."""
    config = config if config is not None else SampleConfig()
    if not isinstance(config, SampleConfig):
        raise TypeError(f"config must be a repa.SampleConfig, got {type(config).__name__}")
    changes = dict(sampler=sampler, steps=steps, cfg_scale=cfg_scale, guided_channels=guided_channels)
    if guidance_interval is not None:
        changes.update(guidance_low=float(guidance_interval[0]), guidance_high=float(guidance_interval[1]))
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})


def generate_images(model, num: int, config: SampleConfig | None = None, *, seed: int = 0, sampler: str | None = None,
                    steps: int | None = None, cfg_scale: float | None = None,
                    guidance_interval: tuple[float, float] | None = None,
                    labels="random", batch_size: int = 64, vae=None, start: int = 0,
                    progress: bool = False, guided_channels: int | str | None = None) -> np.ndarray:
    """Generate images in-process (demo, training previews); same images as ``repa sample`` for the same seed.

    Args:
        model: a ``LoadedModel`` (``repa.load_model``; its training interpolant is used) or a network with
            ``.config``, in eval mode, on its device.
        num: number of images; they are samples ``start .. start + num - 1``.
        config: the sampling settings (``repa.SampleConfig``; default ``SampleConfig()``: the papers' sampler for
            the network, 250 steps, no guidance).
        seed: base seed; sample i depends on (seed, i) only.
        sampler, steps, cfg_scale, guidance_interval, guided_channels: override the fields of ``config``.
        labels: ``random``, ``balanced`` or an int array of ``num`` class indices.
        batch_size: samples per forward batch (does not change the result).
        vae: a loaded ``AutoencoderKL`` (``repa.autoencoder.load_vae``) or a hub id / folder; latent models only.
    Returns:
        uint8 numpy (num, C, H, W): C = 3 for latent models, the model's channels for pixel models.
    """
    from tqdm.auto import tqdm
    sc = sample_config(config, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                       guidance_interval=guidance_interval, guided_channels=guided_channels)
    check_sampling_args(num=num, seed=seed, sampler=sc.sampler, steps=sc.steps, cfg_scale=sc.cfg_scale,
                        guidance_interval=sc.guidance_interval, labels=labels, batch_size=batch_size)
    loaded = as_loaded(model)
    sampler = sc.sampler_for(loaded.config.prediction)
    steps, cfg_scale, guidance_interval, guided_channels = (sc.steps, sc.cfg_scale, sc.guidance_interval,
                                                            sc.guided_channels)
    _check_model(loaded.config, cfg_scale, labels)
    vae = _resolve_vae(loaded, vae)
    indices = np.arange(start, start + num)
    if isinstance(labels, str):
        all_labels = sample_labels(indices, seed, loaded.config.num_classes, labels)
    else:
        all_labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(all_labels) != num:
            raise ValueError(f"got {len(all_labels)} labels for {num} images")
    out = []
    for b in tqdm(range(0, num, batch_size), disable=not progress, desc="sampling", unit="batch"):
        out.append(_generate_batch(loaded, indices[b:b + batch_size], all_labels[b:b + batch_size], seed=seed,
                                   sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                                   guidance_interval=guidance_interval, vae=vae, guided_channels=guided_channels))
    return np.concatenate(out)


def _resolve_vae(loaded: LoadedModel, vae):
    """None for pixel models; a loaded VAE for latent models (loading a hub id / folder, default sd-vae-ft-ema)."""
    if loaded.config.space != "latent":
        if vae is not None:
            raise ValueError(f"{loaded.config.name} is a pixel-space model: it needs no VAE, but vae={vae!r} was "
                             "given")
        return None
    if vae is None or isinstance(vae, (str, os.PathLike)):
        from repa.autoencoder import DECODE_VAE, load_vae
        return load_vae(vae or DECODE_VAE, device=next(loaded.model.parameters()).device)
    return vae


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
                  origin: str = "auto") -> Path:
    """``repa sample``: N samples of a checkpoint into ``out_dir`` (shards, then ``samples.npz``, grid, settings).

    Launch with ``torchrun --nproc_per_node G`` to shard the work; a rerun resumes. Arguments as in
    ``generate_images``; ``which`` picks ``ema`` (default) or ``model`` weights; ``vae`` defaults to sd-vae-ft-ema;
    ``origin`` is ``repa.load_model``'s (which network a checkpoint without this project's config holds).
    Returns the path of ``samples.npz``. One process (one ``torchrun`` job) writes a folder at a time.
    """
    sc = sample_config(config, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                       guidance_interval=guidance_interval, guided_channels=guided_channels)
    sampler, steps, cfg_scale, guidance_interval, guided_channels = (sc.sampler, sc.steps, sc.cfg_scale,
                                                                     sc.guidance_interval, sc.guided_channels)
    check_sampling_args(num=num, seed=seed, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                        guidance_interval=guidance_interval, labels=labels, batch_size=batch_size)
    from repa.hub import looks_like_hub_id
    if not os.path.exists(checkpoint) and not looks_like_hub_id(str(checkpoint)):
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    from repa.preflight import check_output_dir
    from repa.runlock import claim_folder
    out = Path(out_dir)
    is_main = int(os.environ.get("RANK", 0)) == 0
    if is_main:
        check_output_dir(out, "--out")
    with claim_folder(out, "sample folder", enabled=is_main):    # one writer per sample folder
        return _sample_claimed(checkpoint, out, num=num, seed=seed, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                               guidance_interval=guidance_interval, labels=labels, batch_size=batch_size, vae=vae,
                               which=which, device=device, progress=progress, guided_channels=guided_channels,
                               origin=origin)


def _sample_claimed(checkpoint, out: Path, *, num, seed, sampler, steps, cfg_scale, guidance_interval, labels,
                    batch_size, vae, which, device, progress, guided_channels, origin) -> Path:
    """The work of ``sample_to_npz`` once the arguments are checked and ``out`` is locked."""
    from tqdm.auto import tqdm
    from repa import distributed
    from repa.config import to_dict
    from repa.runlock import clean_stale_temp_files
    from repa.visualize import image_grid, save_png
    settings = {"checkpoint": str(Path(checkpoint).resolve()) if os.path.exists(checkpoint) else str(checkpoint),
                "which": which, "num": num, "seed": seed,
                "sampler": sampler, "steps": steps, "cfg_scale": cfg_scale,
                "guidance_interval": [float(v) for v in guidance_interval], "labels": labels, "vae": vae}
    if guided_channels is not None or origin != "auto":       # absent when default: older settings files still match
        settings.update(guided_channels=guided_channels, origin=origin)
    settings_path = out / SETTINGS_FILE
    done_any = (out / SAMPLES_FILE).is_file() or any((out / SHARD_DIR).glob("*.npz"))
    if settings_path.is_file() and done_any:          # settings without any finished batch claim nothing
        previous = json.loads(settings_path.read_text()).get("settings", {})
        changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if changed:
            raise ValueError(f"{out} holds samples made with other settings {changed} (old, new); use another --out "
                             f"or delete the folder")
    target = out / SAMPLES_FILE
    if target.is_file():
        print(f"{target} is complete; nothing to do")
        return target

    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    process = distributed.init(device)
    loaded = load_model(checkpoint, which=which, device=process.device, origin=origin)
    _check_model(loaded.config, cfg_scale, labels)
    sampler = SampleConfig(sampler=sampler).sampler_for(loaded.config.prediction)
    vae_model = _resolve_vae(loaded, vae)
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
        images = _generate_batch(loaded, indices, batch_labels, seed=seed, sampler=sampler, steps=steps,
                                 cfg_scale=cfg_scale, guidance_interval=guidance_interval, vae=vae_model,
                                 guided_channels=guided_channels)
        atomic_write(_shard_file(out, start, end),
                      lambda f: np.savez(f, images=images, labels=batch_labels, indices=indices))
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
        print(f"wrote {target} ({num} samples), {out / GRID_FILE}, {settings_path}")
    distributed.barrier()
    if owns_group:
        distributed.shutdown()
    return target
