"""Model registry keyed by the papers' names: ``SiT-XL/2``, ``DiT-B/4``, ...

``MODELS`` maps each name to its size (depth, width, heads) and patch; ``model_config(name, **overrides)`` gives a
full ``ModelConfig``; ``build_model(cfg)`` constructs the network of the config's family.
"""
from __future__ import annotations

import dataclasses

from repa.config import ConfigError, ModelConfig
from repa.config_validate import validate_model
from repa.model_names import FAMILY_FIELDS, PAPER_NAMES, SIZES, heads_of, model_name, parse_name, size_of
from repa.models.dit import DiT
from repa.models.mmdit import MMDiT
from repa.models.released import ReleasedSiT
from repa.models.sit import FeaturesView, ModelOutput, SiT

FAMILIES = {"SiT": SiT, "DiT": DiT, "MMDiT": MMDiT}
# Networks whose own time convention is not repa's, converted at every call (repa.models.released).
CONVERTED = {"noise_at_0": ReleasedSiT}

# The papers' names, each with the fields it sets (size, patch, and what its family predicts: DiT as released
# predicts epsilon and the variance interpolation, 2C channels, trained with the improved-DDPM objective).
MODELS: dict[str, dict] = {name: {k: v for k, v in parse_name(name).items() if k != "family"}
                           | FAMILY_FIELDS[parse_name(name)["family"]] for name in PAPER_NAMES}
# MMDiT as the REPA reference builds it (sihyun-yu/REPA models/mmdit.py): hidden size 32 x depth, heads = depth,
# patch 2, text-conditioned (no label table) with caption dropout 0.1; named depth x width.
MMDIT_DEPTHS = (12, 18, 24, 30)
MODELS.update({f"MMDiT-{d}x{32 * d}/2": {"depth": d, "hidden_size": 32 * d, "num_heads": d, "patch_size": 2,
                                        "num_classes": 0, **FAMILY_FIELDS["MMDiT"]} for d in MMDIT_DEPTHS})


def register_family(name: str, cls) -> None:
    """Make ``build_model`` construct ``cls`` for configs whose name starts with ``name-``."""
    FAMILIES[name] = cls


def model_config(name: str, **overrides) -> ModelConfig:
    """The ModelConfig of model ``name`` (``"SiT-XL/2"``, or a custom size ``"SiT-6x128/1"``) with field
    overrides, validated. The name sets the size, the patch and what the family predicts; overridden size fields
    rename the model for what it is (``model_config("SiT-B/2", depth=6)`` is ``SiT-6x768/2``)."""
    parts = parse_name(name, tuple(FAMILIES))
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ConfigError(f"unknown model field(s) {bad}; known: {sorted(fields)}")
    family = parts.pop("family")
    if "hidden_size" in overrides and "num_heads" not in overrides:
        parts["num_heads"] = heads_of(overrides["hidden_size"])     # the heads follow the width
    cfg = ModelConfig(name=name, **{**parts, **FAMILY_FIELDS.get(family, {}), **overrides})
    cfg = dataclasses.replace(cfg, name=model_name(family, cfg.depth, cfg.hidden_size, cfg.patch_size))
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
           "build_model", "register_family", "size_of", "heads_of", "model_name", "parse_name"]
