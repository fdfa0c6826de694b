"""Entry point of ``repa prepare`` (options: ``repa.commands.PrepareCommand``); heavy imports happen in
``run_prepare``.

    repa prepare SOURCE OUT [--resolution 256] [--latents | --vae ID_OR_DIR] [--tokens dinov2-vit-b ...]
    repa prepare OUT --tokens ENCODER [...]          add a token cache to a prepared dataset
    repa prepare --verify OUT                        check a dataset against its manifest
"""
from __future__ import annotations

import os
import time

from repa.config import ConfigError


def _wait_for_manifest(path: str) -> None:
    from repa.data.store import MANIFEST
    while not os.path.isfile(os.path.join(path, MANIFEST)):
        time.sleep(5.0)


def _verify(path: str, check_hashes: bool) -> int:
    from repa.data.verify import verify_dataset
    problems = verify_dataset(path, check_hashes=check_hashes)
    for problem in problems:
        print(f"PROBLEM {problem}")
    print(f"{path}: " + (f"{len(problems)} problem(s)" if problems else "OK"))
    return 1 if problems else 0


def run_prepare(args) -> int:
    """Run ``repa prepare`` from parsed arguments; returns the exit code."""
    if args.verify:
        return _verify(args.verify, check_hashes=not args.no_hash)
    if len(args.paths) not in (1, 2):
        raise ConfigError("give SOURCE OUT (prepare), OUT --tokens ENCODER (add a cache) or --verify DIR")
    if len(args.paths) == 1 and not args.tokens:
        raise ConfigError(f"only one path given ({args.paths[0]!r}): give SOURCE and OUT, or OUT with --tokens")
    if len(args.paths) == 1 and (args.latents or args.vae):
        raise ConfigError("adding latents needs the source: rerun `repa prepare SOURCE OUT --vae ...`")
    if args.encoder_weights and len(args.encoder_weights) != len(args.tokens):
        raise ConfigError(f"--encoder-weights: give one path per --tokens encoder ({len(args.tokens)}), "
                         f"got {len(args.encoder_weights)}")
    for flag, value, low in (("--chunk-size", args.chunk_size, 1), ("--workers", args.workers, 0),
                             ("--batch-size", args.batch_size, 1), ("--token-grid", args.token_grid, 1)):
        if value is not None and value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    rank = int(os.environ.get("RANK", 0))
    out = args.paths[-1]
    if len(args.paths) == 2:
        from repa.autoencoder import DEFAULT_VAE
        from repa.data.prepare import prepare_dataset
        vae = args.vae or (DEFAULT_VAE if args.latents else None)
        prepare_dataset(args.paths[0], out, split=args.split, resolution=args.resolution or None,
                        channels=args.channels, hflip=args.hflip, small=args.small, chunk_size=args.chunk_size,
                        num_workers=args.workers, vae=vae, latent_dtype=args.latent_dtype,
                        batch_size=args.batch_size, device=args.device, overwrite=args.overwrite,
                        progress=not args.quiet)
        if rank == 0:
            from repa.data.prepare import summary
            from repa.data.store import MANIFEST, read_json
            # the first line; skipped/converted files were already reported as warnings by prepare_dataset
            print(summary(read_json(os.path.join(out, MANIFEST)), os.path.abspath(out)).split("\n")[0])
    if args.tokens:
        from repa.data.store import open_dataset
        from repa.data.tokens import build_token_cache
        try:
            from repa.encoders import load_encoder
        except ImportError as exc:
            raise ConfigError(f"--tokens needs repa.encoders, which cannot be imported here ({exc})") from None
        from repa.runlock import claim_folder
        if rank != 0:
            _wait_for_manifest(out)
        ds = open_dataset(out)
        resolution = ds.resolution
        grid = args.token_grid or (resolution // 16 if ds.has_latents else resolution // 2)
        weights = args.encoder_weights or [None] * len(args.tokens)
        for name, w in zip(args.tokens, weights):
            encoder = load_encoder(name, resolution=resolution, token_grid=grid, weights=w, device=args.device)
            with claim_folder(out, "dataset", enabled=rank == 0):
                key = build_token_cache(out, encoder, weights=w, batch_size=args.batch_size,
                                        progress=not args.quiet)
            if rank == 0:
                print(f"token cache {key} ready in {out}")
    return 0
