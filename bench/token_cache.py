"""Token-cache throughput: ``repa prepare OUT --tokens ENCODER`` against the default job's token stage.

    python bench/token_cache.py                       # efficientnet-lite0, grid 7, 2000 Fashion-MNIST images, 5 pairs
    python bench/token_cache.py --token-grid 14 --items 500 --repeats 3
    python bench/token_cache.py --token-precision fp32 --batch-size 64 # repa prepare as it was before

The dataset is prepared once (``repa prepare fashion-mnist DIR --max-items N``). Each repeat then times, back to
back, (a) the default job's token stage (``repa.demo.pipeline``: ``load_encoder(..., autocast_dtype=bfloat16)`` and
its ``_tokens``, batches of 500) on the same images and (b) ``repa prepare DIR --tokens ENCODER --token-grid G``
through ``prepare_command`` (the cache removed first). Both include loading the encoder. On a shared machine the
pairs drift together; the medians of the per-repeat rates are reported.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch

from repa.data import open_dataset, prepare_dataset
from repa.data.command import PrepareOptions, prepare_command
from repa.data.store import TOKENS
from repa.demo.pipeline import _tokens
from repa.encoders import load_encoder
from repa.utils import use_all_cpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--token-grid", type=int, default=7)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--token-precision", default="bf16", help="repa prepare --token-precision")
    ap.add_argument("--batch-size", type=int, default=None, help="repa prepare --batch-size")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "repa-bench-token-cache"))
    args = ap.parse_args()
    out = os.path.join(args.dir, f"fmnist-{args.items}")
    prepare_dataset("fashion-mnist", out, max_items=args.items, progress=False)
    images = open_dataset(out).get_batch(np.arange(args.items), keys=["image"])["image"]    # (N, 1, 28, 28)
    opts = PrepareOptions(tokens=(args.encoder,), token_grid=args.token_grid, quiet=True,
                          token_precision=args.token_precision, batch_size=args.batch_size)
    rates: dict[str, list[tuple[float, float]]] = {"default job": [], "repa prepare": []}

    def timed(name, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        rates[name].append((args.items / (time.perf_counter() - wall), args.items / (time.process_time() - cpu)))

    def demo_stage():
        teacher = load_encoder(args.encoder, resolution=28, token_grid=args.token_grid, autocast_dtype=torch.bfloat16)
        _tokens(teacher, images)

    for r in range(args.repeats):
        use_all_cpus()
        timed("default job", demo_stage)
        shutil.rmtree(os.path.join(out, TOKENS), ignore_errors=True)
        timed("repa prepare", lambda: prepare_command([out], opts))
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1][0]:.0f} img/s" for k, v in rates.items()), flush=True)
    (dw, dc), (pw, pc) = [[statistics.median(x) for x in zip(*v)] for v in rates.values()]
    print(f"{args.encoder} grid {args.token_grid}, {args.items} images, {torch.get_num_threads()} threads, "
          f"{args.repeats} pairs: median default job {dw:.0f} img/s ({dc:.0f} per CPU-second), repa prepare "
          f"{pw:.0f} img/s ({pc:.0f} per CPU-second): {pw / dw:.2f}x ({pc / dc:.2f}x per CPU-second)")


if __name__ == "__main__":
    main()
