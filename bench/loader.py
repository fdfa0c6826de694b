"""Loader throughput: samples/s that ``BatchLoader`` over a prepared dataset sustains from one process.

    python bench/loader.py                       # 20k synthetic 256x256x3 images + 4x32x32 latent mean/std
    python bench/loader.py --fashion-mnist       # the real Fashion-MNIST train split (28x28x1), prepared first
    python bench/loader.py --reference --num 2048   # the reference's images/ + vae-sd/ folder, read as it is

The synthetic dataset is written once in the ``repa prepare`` format (random pixels; about 4.6 GB at the defaults)
into --dir and reused by later runs; pass --clean to delete it at the end. Figures are taken after one warm-up
pass, i.e. with the files in the page cache (what a training run sees from its second epoch, or from the first on a
machine whose memory holds the dataset); the first pass is reported too.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np

from repa.data import open_dataset, open_folder
from repa.data.arrays import save_arrays
from repa.data.loader import BatchLoader


class _Synthetic:
    """Lazy random array: ``x[a:b]`` makes rows a..b-1 from a seed, so 4 GB never sit in memory."""

    def __init__(self, shape, dtype, seed):
        self.shape, self.dtype, self.seed = tuple(shape), np.dtype(dtype), seed

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, sl: slice):
        rng = np.random.default_rng([self.seed, sl.start])
        shape = (min(sl.stop, self.shape[0]) - sl.start, *self.shape[1:])
        if self.dtype == np.uint8:
            return rng.integers(0, 256, shape, dtype=np.uint8)
        return rng.standard_normal(shape, dtype=np.float32).astype(self.dtype)


def make_synthetic(path: str, num: int, resolution: int, latent_dtype: str) -> None:
    """Write the synthetic dataset unless one of the same shape is already there."""
    try:
        ds = open_dataset(path)
        if len(ds) == num and ds.resolution == resolution and ds.has_latents and \
                ds.manifest["arrays"]["latent_mean"]["dtype"] == latent_dtype:
            return
    except (FileNotFoundError, ValueError):
        pass
    h = resolution // 8
    t0 = time.perf_counter()
    save_arrays(path, _Synthetic((num, 3, resolution, resolution), np.uint8, 0),
                np.arange(num) % 1000, class_names=[f"c{i}" for i in range(1000)],
                latent_mean=_Synthetic((num, 4, h, h), latent_dtype, 1),
                latent_std=_Synthetic((num, 4, h, h), latent_dtype, 2), source="synthetic benchmark data",
                overwrite=True)
    print(f"wrote {num} synthetic items to {path} in {time.perf_counter() - t0:.1f} s")


def make_reference_folder(path: str, num: int, resolution: int) -> None:
    """The same synthetic items in the reference's layout (dataset_tools.py: PNG at compress_level 0, one float32
    (8, h, w) .npy of mean and std per image, dataset.json), unless it is already there."""
    import json
    from PIL import Image
    if os.path.isfile(os.path.join(path, "vae-sd", "dataset.json")):
        return
    t0, h = time.perf_counter(), resolution // 8
    images = _Synthetic((num, resolution, resolution, 3), np.uint8, 0)
    moments = _Synthetic((num, 8, h, h), "float32", 1)
    labels = []
    for i in range(num):
        s = f"{i:08d}"
        for store in ("images", "vae-sd"):
            os.makedirs(os.path.join(path, store, s[:5]), exist_ok=True)
        Image.fromarray(images[i:i + 1][0]).save(os.path.join(path, "images", s[:5], f"img{s}.png"), compress_level=0)
        np.save(os.path.join(path, "vae-sd", s[:5], f"img-mean-std-{s}.npy"), np.abs(moments[i:i + 1][0]))
        labels.append([f"{s[:5]}/img-mean-std-{s}.npy", i % 1000])
    with open(os.path.join(path, "vae-sd", "dataset.json"), "w") as f:
        json.dump({"labels": labels}, f)
    print(f"wrote {num} synthetic items in the reference's layout to {path} in {time.perf_counter() - t0:.1f} s")


def measure(loader, num_batches: int) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second of this process) over ``num_batches`` batches.

    The CPU figure is what the loader would sustain on an otherwise idle core; the wall figure depends on what
    else runs on the machine.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    seen = 0
    for _ in range(num_batches):
        batch = next(loader)
        seen += len(batch["label"])
    return seen / (time.perf_counter() - t0), seen / (time.process_time() - c0)


def main(argv=None) -> int:
    """Run the benchmark; prints one line per measurement."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "repa-bench-loader"))
    p.add_argument("--num", type=int, default=20_000)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--latent-dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader thread counts to measure")
    p.add_argument("--fashion-mnist", action="store_true", help="benchmark the real Fashion-MNIST train split")
    p.add_argument("--reference", action="store_true", help="the reference's images/ + vae-sd/ folder, as it is")
    p.add_argument("--clean", action="store_true", help="delete the benchmark dataset afterwards")
    args = p.parse_args(argv)

    if args.fashion_mnist:
        from repa.data.prepare import prepare_dataset
        path = args.dir + "-fashion-mnist"
        t0 = time.perf_counter()
        prepare_dataset("fashion-mnist", path, progress=False)
        print(f"prepare fashion-mnist (or find it prepared): {time.perf_counter() - t0:.1f} s")
    elif args.reference:
        path = args.dir + "-reference"
        make_reference_folder(path, args.num, args.resolution)
    else:
        path = args.dir
        make_synthetic(path, args.num, args.resolution, args.latent_dtype)
    ds = open_folder(path)
    print(f"dataset: {ds}")
    batches_per_epoch = len(ds) // args.batch_size
    for workers in args.workers:
        loader = BatchLoader(ds, args.batch_size, seed=0, num_workers=workers)
        first, _ = measure(loader, batches_per_epoch)          # first pass: may read from disk
        warm, warm_cpu = measure(loader, batches_per_epoch)
        loader.close()
        print(f"BatchLoader workers={workers} batch={args.batch_size}: {warm:,.0f} samples/s wall, "
              f"{warm_cpu:,.0f} samples per CPU-second (first pass {first:,.0f} samples/s wall)")
    t0, c0 = time.perf_counter(), time.process_time()
    rng = np.random.default_rng(0)
    for _ in range(batches_per_epoch):
        ds.get_batch(rng.integers(0, len(ds), args.batch_size))
    n = batches_per_epoch * args.batch_size
    print(f"get_batch alone (random order): {n / (time.perf_counter() - t0):,.0f} samples/s wall, "
          f"{n / (time.process_time() - c0):,.0f} samples per CPU-second")
    print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other processes slow the wall "
          f"figures)")
    if args.clean:
        shutil.rmtree(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
