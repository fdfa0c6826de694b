"""Model registry keyed by the papers' names: ``SiT-XL/2``, ``DiT-B/4``, ...

``MODELS`` maps each name to its size (depth, width, heads) and patch; ``model_config(name, **overrides)`` gives a
full ``ModelConfig``; ``build_model(cfg)`` constructs the network of the config's family.
"""
from __future__ import annotations

import dataclasses

from repa.config import ConfigError, ModelConfig, validate_model
from repa.models.dit import DiT
from repa.models.mmdit import MMDiT
from repa.models.released import ReleasedSiT
from repa.models.sit import FeaturesView, ModelOutput, SiT

# Sizes of the SiT/DiT papers: (depth, hidden size, heads).
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PATCHES = {"SiT": (1, 2, 4, 8), "DiT": (2, 4, 8)}

FAMILIES = {"SiT": SiT, "DiT": DiT, "MMDiT": MMDiT}
# Networks whose own time convention is not repa's, converted at every call (repa.models.released).
CONVERTED = {"noise_at_0": ReleasedSiT}
# DiT as released: epsilon and the variance interpolation (2C channels), trained with the improved-DDPM objective.
FAMILY_DEFAULTS = {"SiT": {}, "DiT": {"learn_sigma": True, "prediction": "epsilon"}}

MODELS: dict[str, dict] = {
    f"{family}-{size}/{patch}": {"depth": d, "hidden_size": w, "num_heads": h, "patch_size": patch,
                                 **FAMILY_DEFAULTS[family]}
    for family, patches in PATCHES.items()
    for size, (d, w, h) in SIZES.items()
    for patch in patches
}
# MMDiT as the REPA reference builds it (sihyun-yu/REPA models/mmdit.py): named by depth as in SD3, hidden size
# 32 x depth, heads = depth, patch 2, text-conditioned (no label table) with caption dropout 0.1.
MMDIT_DEPTHS = (12, 18, 24, 30)
MODELS.update({f"MMDiT-d{d}/2": {"depth": d, "hidden_size": 32 * d, "num_heads": d, "patch_size": 2,
                                 "num_classes": 0} for d in MMDIT_DEPTHS})


def size_of(depth: int, hidden_size: int) -> str | None:
    """The paper's size name (``"XL"``) of a network with this depth and width, or None for a custom size."""
    return next((name for name, (d, w, _) in SIZES.items() if (d, w) == (depth, hidden_size)), None)


def heads_of(hidden_size: int) -> int:
    """Attention heads of the paper's size with this width; 64-d heads for other widths."""
    return next((h for _, w, h in SIZES.values() if w == hidden_size), max(1, hidden_size // 64))


def register_family(name: str, cls) -> None:
    """Make ``build_model`` construct ``cls`` for configs whose name starts with ``name-``."""
    FAMILIES[name] = cls


def model_config(name: str, **overrides) -> ModelConfig:
    """The ModelConfig of preset ``name`` (e.g. ``"SiT-XL/2"``), with field overrides, validated."""
    if name not in MODELS:
        raise ConfigError(f"model.name: unknown model {name!r}; known models: {', '.join(MODELS)}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ConfigError(f"unknown model field(s) {bad}; known: {sorted(fields)}")
    cfg = ModelConfig(name=name, **{**MODELS[name], **overrides})
    validate_model(cfg)
    return cfg


def build_model(cfg: ModelConfig):
    """Construct the network described by ``cfg`` (validated first); a ``noise_at_0`` SiT (willisma/SiT's
    weights) is built as ``ReleasedSiT``, which answers in repa's convention."""
    validate_model(cfg)
    if cfg.family not in FAMILIES:
        raise ConfigError(f"model.name: no model family {cfg.family!r}; known: {sorted(FAMILIES)}")
    if cfg.time_convention in CONVERTED:
        return CONVERTED[cfg.time_convention](cfg)
    return FAMILIES[cfg.family](cfg)


__all__ = ["MODELS", "SIZES", "SiT", "DiT", "MMDiT", "ReleasedSiT", "FeaturesView", "ModelOutput", "model_config",
           "build_model", "register_family", "size_of", "heads_of"]
