"""What the EMA of a run holds after a number of steps, and a warning when that is still mostly the initial weights.

The training loop keeps an exponential moving average of the weights (``ema <- decay * ema + (1 - decay) * net``
after every optimizer step, starting from an exact copy, as ``update_ema`` in the ``train.py`` of
facebookresearch/DiT and sihyun-yu/REPA). Sampling, analysis and evaluation read it by default, which on a run
shorter than its averaging window shows the initial network.
"""
from __future__ import annotations

import math
import warnings


def ema_initial_share(decay: float, steps: int) -> float:
    """The weight the EMA still gives the initial weights after ``steps`` updates: ``decay ** steps``.

    The EMA starts as an exact copy w_0 and every step does ema <- decay * ema + (1 - decay) * w_k (the loop's
    lerp), so ema_n = decay^n w_0 + sum_k (1 - decay) decay^(n-k) w_k.
    """
    return float(decay) ** int(steps)


def ema_unmoved_warning(loaded, which: str) -> str | None:
    """Warn (and return the line) when ``which`` is ``ema`` and the EMA of ``loaded`` (a ``LoadedModel``) is still
    mostly its initial weights: ``ema_initial_share`` above 1/e, i.e. the run is shorter than the EMA's time
    constant of about 1 / (1 - decay) steps (a 200-step run at decay 0.999 is 82% initial weights). Such weights
    look untrained to sampling and analysis. None when they moved, or the checkpoint does not record its decay."""
    cfg = getattr(loaded, "train_config", None)
    share = None if which != "ema" or cfg is None else ema_initial_share(cfg.ema_decay, loaded.step)
    if share is None or share <= math.exp(-1):
        return None
    message = (f"{loaded.path}: its EMA weights are still {share:.1%} the initial weights ({loaded.step} steps at "
               f"ema_decay {cfg.ema_decay}, which averages over about {1 / (1 - cfg.ema_decay):.0f} steps), so they "
               "show little of the training; read the trained weights with --which model")
    warnings.warn(message, stacklevel=2)
    return message
