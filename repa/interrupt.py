"""Ctrl-C and SIGTERM: stop at a clean point instead of dying half-way.

Clusters send SIGTERM before a preemption and people press Ctrl-C. Two pieces:

- ``signals_as_exceptions()`` (the command line, every command): SIGTERM raises ``Interrupted`` like SIGINT raises
  ``KeyboardInterrupt``, so ``finally`` blocks run and temporary files are removed; the process exits 143 / 130.
- ``GracefulStop`` (the training loop): while it is active a signal only sets a flag; the loop finishes the current
  step, writes a checkpoint, and raises ``Interrupted`` naming it. A second Ctrl-C stops at once.
"""
from __future__ import annotations

import contextlib
import signal


class Interrupted(Exception):
    """The process was asked to stop by ``signum``; ``checkpoint`` is where a training run can resume from."""

    def __init__(self, signum: int, step: int | None = None, checkpoint=None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        where = f" at step {step}" if step is not None else ""
        saved = f"; checkpoint {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"interrupted by {signal.Signals(signum).name}{where}{saved}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def signals_as_exceptions():
    """Turn SIGTERM into an ``Interrupted`` exception for the ``with`` block (SIGINT already raises)."""
    def on_term(signum, frame):
        raise Interrupted(signum)
    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:          # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class GracefulStop:
    """Records SIGINT/SIGTERM while active; ``requested`` is the first signal number (0: none).

    Use as a context manager around the training loop. A second SIGINT raises ``KeyboardInterrupt`` immediately.
    """

    def __init__(self):
        self.requested = 0
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = self.requested or signum

    def __enter__(self) -> "GracefulStop":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: signals keep their default behaviour
                break
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def check(self, step: int, every: int, world_size: int, device) -> int:
        """The signal to stop on after ``step`` (0: go on).

        One process: checked after every step. Several: every rank must stop at the same step (a checkpoint is a
        collective), so the flags are combined (an all-reduce, a host sync) only every ``every`` steps, where the
        loop synchronises for logging anyway.
        """
        if world_size == 1:
            return self.requested
        if step % every:
            return 0
        import torch
        import torch.distributed as dist
        flag = torch.tensor([self.requested], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag)
