"""The default job's speed-up: training steps the baseline needs for its final quality / steps an arm needs."""
from __future__ import annotations

import numpy as np


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """The first training step at which a (step, value) curve, lower is better, reaches ``target`` (linear
    interpolation between evaluation points; the first point counts as reached from step 0). None if never."""
    previous = (0, float("inf"))
    for step, value in sorted(curve):
        if value <= target:
            s0, v0 = previous
            if not np.isfinite(v0):
                return float(step)
            return s0 + (v0 - target) / (v0 - value) * (step - s0)
        previous = (step, value)
    return None


def speedup(curve: list[tuple[int, float]], baseline: list[tuple[int, float]]) -> float | None:
    """Steps the baseline needs to reach its final value / steps ``curve`` needs to reach it (None: never)."""
    target = sorted(baseline)[-1][1]
    base_steps, steps = steps_to_reach(baseline, target), steps_to_reach(curve, target)
    return None if steps is None or steps == 0 else base_steps / steps
