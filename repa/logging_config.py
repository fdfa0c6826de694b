"""The Weights & Biases settings of a training run (``TrainConfig.wandb_run``; read only when ``wandb`` is on).

The reference code (sihyun-yu/REPA ``train.py``) logs through accelerate's trackers to a W&B run named after the
experiment; here the project, entity, run name and tags are options, and the preview grids (``--sample-every``) are
logged as images at their own cadence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class WandbConfig:
    """Where and how a run is logged to W&B (with ``--wandb``)."""
    project: str = "repa"             # W&B project
    entity: Optional[str] = None      # W&B team or user (default: the logged-in user's default entity)
    name: Optional[str] = None        # the W&B run's name (default: the run folder's name)
    tags: tuple[str, ...] = ()        # tags of the W&B run
    images: bool = True               # log each preview grid (--sample-every) as an image


def wandb_init_kwargs(cfg) -> dict:
    """The keyword arguments of ``wandb.init`` for TrainConfig ``cfg``: project, entity, name (default the run
    folder's), tags, the whole config, and ``resume="allow"``."""
    import dataclasses
    import json
    from pathlib import Path
    w = cfg.wandb_run
    return dict(project=w.project, entity=w.entity, name=w.name or Path(cfg.run_dir).name, tags=list(w.tags),
                config=json.loads(json.dumps(dataclasses.asdict(cfg))), resume="allow")
