"""A deterministic, resumable batch loader over a ``repa.data.Dataset`` (it reads ``__len__`` and ``get_batch``).

Order: epoch e is a permutation drawn from (seed, e). Each step takes one *global* batch of
``batch_size * world_size`` consecutive indices of that permutation; rank r gets the r-th contiguous slice, so N
processes see exactly the samples one process would. The position (epoch, batch) is what ``state_dict`` stores.
Background threads prefetch upcoming batches; the position counts only batches handed out.
"""
from __future__ import annotations

import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from repa.data.protocol import DataError, Dataset


def epoch_permutation(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch, a function of (seed, epoch) only."""
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(num_items)


class BatchLoader:
    """Infinite iterator of dict batches of torch tensors, deterministic from (seed, epoch), resumable.

    Args:
        dataset: a ``repa.data.Dataset``; only ``__len__`` and ``get_batch(np.ndarray, keys)`` are read.
        batch_size: per-rank batch size.
        seed: order seed.
        rank, world_size: this process's slice of every global batch.
        num_workers: threads prefetching batches (0: load in the caller's thread).
        keys: the batch fields to keep (default: all).
        pin_memory: pin tensors for fast non-blocking host-to-GPU copies.
        readers: fields computed instead of read by ``get_batch`` (a condition's ``readers``, e.g. one caption
            drawn per item): name -> ``read(dataset, indices, uniforms) -> dict of arrays``; ``uniforms`` are this
            rank's rows of U(0, 1) draws for the global batch from (seed, epoch, batch, name), so the draw is
            independent of the world size and repeats exactly on resume.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, keys=None, pin_memory: bool = False, prefetch: int = 4, readers=None):
        global_batch = batch_size * world_size
        if len(dataset) < global_batch:
            raise DataError(f"the dataset has {len(dataset)} items, fewer than one global batch of {global_batch}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.keys = rank, world_size, keys
        self.pin_memory, self.readers = pin_memory, dict(readers or {})
        self.batches_per_epoch = len(dataset) // global_batch
        self.epoch, self.batch = 0, 0
        self.num_workers, self.prefetch = num_workers, max(prefetch, num_workers)
        self._pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
        self._queue: deque = deque()
        self._perm_cache: tuple[int, np.ndarray] | None = None

    # -- position ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "world_size": self.world_size,
                "batch_size": self.batch_size, "num_items": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        current = self.state_dict()
        for key in ("seed", "num_items"):
            if key in state and state[key] != current[key]:
                raise DataError(f"loader state has {key}={state[key]} but this loader has {current[key]}; "
                                 "the data position cannot be restored")
        if state.get("batch_size", self.batch_size) * state.get("world_size", self.world_size) != \
                self.batch_size * self.world_size:
            raise DataError("the saved data position was for another global batch size; it cannot be restored")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._queue.clear()

    # -- iteration -----------------------------------------------------------------------------------------------
    def _indices(self, epoch: int, batch: int) -> np.ndarray:
        cache = self._perm_cache   # read once: a prefetch thread may swap in the next epoch's permutation meanwhile
        if cache is None or cache[0] != epoch:
            cache = (epoch, epoch_permutation(len(self.dataset), self.seed, epoch))
            self._perm_cache = cache
        start = batch * self.batch_size * self.world_size + self.rank * self.batch_size
        return cache[1][start:start + self.batch_size]

    def _load(self, epoch: int, batch: int) -> dict[str, torch.Tensor]:
        # get_batch returns items in the order asked (a prepared dataset reads them in file order internally), so
        # no reorder copy here; get_batch reads only the fields wanted (token caches are large)
        idx = self._indices(epoch, batch)
        asked = None if self.keys is None else [k for k in self.keys if k not in self.readers]
        raw = {k: v for k, v in self.dataset.get_batch(idx, keys=asked).items() if asked is None or k in asked}
        for name, read in self.readers.items():
            draws = np.random.Generator(np.random.PCG64([self.seed, epoch, batch, zlib.crc32(name.encode())]))
            start = self.rank * self.batch_size
            raw.update(read(self.dataset, idx, draws.random(self.batch_size * self.world_size)[start:start + len(idx)]))
        out = {}
        for key, value in raw.items():
            tensor = torch.from_numpy(np.ascontiguousarray(value))
            out[key] = tensor.pin_memory() if self.pin_memory else tensor
        return out

    def _positions(self):
        epoch, batch = self.epoch, self.batch + len(self._queue)
        epoch += batch // self.batches_per_epoch
        return epoch, batch % self.batches_per_epoch

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._pool is None:
            out = self._load(self.epoch, self.batch)
        else:
            while len(self._queue) < self.prefetch:
                self._queue.append(self._pool.submit(self._load, *self._positions()))
            out = self._queue.popleft().result()
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
