"""``repa prepare`` as one library call: its typed options (``PrepareOptions``, the command's flags) and
``prepare_command``, which checks their combination, prepares the dataset, adds token caches or verifies a folder.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

from repa.config import ConfigError
from repa.data import store
from repa.data.prepare import prepare_dataset, summary
from repa.preflight import check_device
from repa.runlock import claim_folder


@dataclass(frozen=True)
class PrepareOptions:
    """How ``repa prepare`` prepares, caches or verifies (the comment next to a field is its ``--help`` line)."""
    verify: Optional[str] = None      # check this dataset folder against its manifest and exit
    hash: bool = True                 # --verify: also check every file's sha256 (--no-hash: shapes and counts only)
    split: Optional[str] = None       # split sub-folder (train / val), or train / test for Fashion-MNIST
    resolution: int = -1              # ADM centre-crop side (-1: 256 for folders; Fashion-MNIST keeps 28, also with 0)
    channels: Optional[Literal[1, 3]] = None  # 3 (RGB, default for folders) or 1 (greyscale)
    hflip: bool = False               # also store a horizontally flipped copy of every image
    small: Literal["upscale", "skip"] = "upscale"  # images smaller than the crop: upscale (ADM) or skip
    chunk_size: Optional[int] = None  # items per chunk/shard (default: about 64 MiB of images)
    workers: Optional[int] = None     # decoding processes (default: the CPUs of this rank)
    latents: bool = False             # store the latent moments of the SD-VAE (sd-vae-ft-mse; another: --vae)
    vae: Optional[str] = None         # hub id or folder of the AutoencoderKL (implies --latents; default sd-vae-ft-mse)
    latent_dtype: Literal["float32", "float16"] = "float32"  # storage dtype of the latent moments
    tokens: tuple[str, ...] = ()      # cache the tokens of these encoders (e.g. dinov2-vit-b)
    # token grid of the SiT the cache is for (default: a /2 SiT's grid: resolution // 16 with latents, // 2 in pixels)
    token_grid: Optional[int] = None
    encoder_weights: tuple[str, ...] = ()  # local weights, one per --tokens encoder
    batch_size: int = 64              # VAE / encoder batch size
    device: Optional[str] = None      # device of the VAE and encoders (default: cuda:LOCAL_RANK when available, else cpu)
    overwrite: bool = False           # delete an existing dataset in OUT and start again
    quiet: bool = False               # no progress bars


def prepare_command(paths: Sequence[str], opts: PrepareOptions = PrepareOptions()) -> int:
    """``repa prepare`` as a function; prints what it did and returns the exit code.

    ``paths`` (SOURCE, OUT) prepares OUT (``prepare_dataset``; ``latents`` stores the latents of the default VAE, ``vae``
    those of another; ``resolution`` 0 keeps the native size), then adds a token cache for each encoder of ``tokens``
    (``encoder_weights``: one local path per encoder, or none; ``token_grid``: default the grid of a /2 SiT). OUT
    alone with ``tokens`` only adds the caches; ``verify`` checks a folder against its manifest (1: problems found).
    """
    verify, tokens, encoder_weights, token_grid = opts.verify, opts.tokens, opts.encoder_weights, opts.token_grid
    latents, vae, batch_size, device, progress = opts.latents, opts.vae, opts.batch_size, opts.device, not opts.quiet
    check_device(device)
    if verify:
        from repa.data.verify import verify_dataset
        problems = verify_dataset(verify, check_hashes=opts.hash)
        for problem in problems:
            print(f"PROBLEM {problem}")
        print(f"{verify}: " + (f"{len(problems)} problem(s)" if problems else "OK"))
        return 1 if problems else 0
    if len(paths) not in (1, 2):
        raise ConfigError("give SOURCE OUT (prepare), OUT --tokens ENCODER (add a cache) or --verify DIR")
    if len(paths) == 1 and not tokens:
        raise ConfigError(f"only one path given ({paths[0]!r}): give SOURCE and OUT, or OUT with --tokens")
    if len(paths) == 1 and (latents or vae):
        raise ConfigError("adding latents needs the source: rerun `repa prepare SOURCE OUT --vae ...`")
    if encoder_weights and len(encoder_weights) != len(tokens):
        raise ConfigError(f"--encoder-weights: give one path per --tokens encoder ({len(tokens)}), "
                          f"got {len(encoder_weights)}")
    for flag, value, low in (("--chunk-size", opts.chunk_size, 1), ("--workers", opts.workers, 0),
                             ("--batch-size", batch_size, 1), ("--token-grid", token_grid, 1)):
        if value is not None and value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    rank, out = int(os.environ.get("RANK", 0)), paths[-1]
    if len(paths) == 2:
        from repa.autoencoder import DEFAULT_VAE
        prepare_dataset(paths[0], out, split=opts.split, resolution=opts.resolution or None,
                        channels=opts.channels, hflip=opts.hflip, small=opts.small, chunk_size=opts.chunk_size,
                        num_workers=opts.workers, vae=vae or (DEFAULT_VAE if latents else None),
                        latent_dtype=opts.latent_dtype, batch_size=batch_size, device=device,
                        overwrite=opts.overwrite, progress=progress)
        if rank == 0:         # the first line; skipped/converted files were already reported as warnings
            print(summary(store.read_json(os.path.join(out, store.MANIFEST)), os.path.abspath(out)).split("\n")[0])
    if tokens:
        from repa.data.tokens import build_token_cache
        try:
            from repa.encoders import load_encoder
        except ImportError as exc:
            raise ConfigError(f"--tokens needs repa.encoders, which cannot be imported here ({exc})") from None
        while rank != 0 and not os.path.isfile(os.path.join(out, store.MANIFEST)):
            time.sleep(5.0)
        ds = store.open_dataset(out)
        grid = token_grid or (ds.resolution // 16 if ds.has_latents else ds.resolution // 2)
        for name, weights in zip(tokens, encoder_weights or [None] * len(tokens)):
            encoder = load_encoder(name, resolution=ds.resolution, token_grid=grid, weights=weights, device=device)
            with claim_folder(out, "dataset", enabled=rank == 0):
                key = build_token_cache(out, encoder, weights=weights, batch_size=batch_size, progress=progress)
            if rank == 0:
                print(f"token cache {key} ready in {out}")
    return 0
