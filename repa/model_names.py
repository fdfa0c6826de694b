"""What a model name says: ``Family-Size/patch``, the papers' sizes (``SiT-XL/2``: 28 blocks of width 1152, 16 heads,
patch 2; DiT and SiT share them) or a custom one written as ``depth x width`` (``SiT-6x128/1``, the demo's model).

The name decides the architecture: ``parse_name`` gives the fields it sets, ``model_name`` the name of a network
with given fields (the paper's name where one fits, else the custom form), so a size override renames the model for
what it is. The family also decides what the network predicts and the objective that trains it (``FAMILY_FIELDS``,
``FAMILY_OBJECTIVE``): a DiT is trained with the improved-DDPM objective (epsilon and a learned variance, Nichol &
Dhariwal 2021; facebookresearch/DiT ``train.py``), a SiT as a velocity network (willisma/SiT, sihyun-yu/REPA).
"""
from __future__ import annotations

import difflib
import re

from repa.fields import ConfigError

# Sizes of the DiT/SiT papers: (depth, hidden size, heads).
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PATCHES = {"SiT": (1, 2, 4, 8), "DiT": (2, 4, 8)}          # the patch sizes of the papers' names
FAMILY_FIELDS = {"SiT": {"learn_sigma": False, "prediction": "velocity"},
                 "DiT": {"learn_sigma": True, "prediction": "epsilon"},
                 "MMDiT": {"learn_sigma": False, "prediction": "velocity", "num_classes": 0}}
FAMILY_OBJECTIVE = {"SiT": "interpolant", "DiT": "iddpm", "MMDiT": "interpolant"}
# MMDiT (text-to-image, repa.models.mmdit) has no paper sizes: always depth x width, heads = depth (the REPA
# reference's rule: 32 x depth wide, 32-d heads)
FAMILIES = (*PATCHES, "MMDiT")
PAPER_NAMES = tuple(f"{family}-{size}/{patch}" for family, patches in PATCHES.items() for size in SIZES
                    for patch in patches)
_NAME = re.compile(r"(?P<family>[A-Za-z]+)-(?:(?P<size>S|B|L|XL)|(?P<depth>[0-9]+)x(?P<width>[0-9]+))"
                   r"/(?P<patch>[0-9]+)")


def heads_of(hidden_size: int) -> int:
    """Attention heads of the paper's size with this width; 64-d heads for other widths."""
    return next((h for _, w, h in SIZES.values() if w == hidden_size), max(1, hidden_size // 64))


def size_of(depth: int, hidden_size: int) -> str | None:
    """The paper's size name (``"XL"``) of a network with this depth and width, or None for a custom size."""
    return next((name for name, (d, w, _) in SIZES.items() if (d, w) == (depth, hidden_size)), None)


def parse_name(name: str, families=FAMILIES) -> dict:
    """The parts of model name ``name``: ``family``, ``depth``, ``hidden_size``, ``num_heads``, ``patch_size``.

    A paper size needs one of the paper's patches (``SiT-XL/2``, ``DiT-B/4``); a custom size ``DxW`` any patch
    (``SiT-6x128/1``: heads of 64 channels). ConfigError naming the known names (and the closest) otherwise."""
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    ok = match is not None and match["family"] in families and int(match["patch"]) >= 1 and (
        match["size"] is None or int(match["patch"]) in PATCHES.get(match["family"], ()))
    if ok and match["size"] is None:
        ok = int(match["depth"]) >= 1 and int(match["width"]) >= 1
    if not ok:
        close = difflib.get_close_matches(str(name), PAPER_NAMES, n=1)
        raise ConfigError(f"model.name: unknown model {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                          + f"; known: {', '.join(PAPER_NAMES)}, or a custom size Family-<depth>x<width>/<patch> "
                          "(SiT-6x128/2)")
    if match["size"] is not None:
        depth, width, heads = SIZES[match["size"]]
    else:
        depth, width = int(match["depth"]), int(match["width"])
        heads = depth if match["family"] == "MMDiT" and width % depth == 0 else heads_of(width)
    return {"family": match["family"], "depth": depth, "hidden_size": width, "num_heads": heads,
            "patch_size": int(match["patch"])}


def model_name(family: str, depth: int, hidden_size: int, patch_size: int) -> str:
    """The name of a ``family`` network of this size: the paper's (``SiT-XL/2``) where one fits, else the custom
    form ``SiT-6x128/1``."""
    size = size_of(depth, hidden_size)
    if size is not None and patch_size in PATCHES.get(family, ()):
        return f"{family}-{size}/{patch_size}"
    return f"{family}-{depth}x{hidden_size}/{patch_size}"


def name_of(model) -> str:
    """The name that says what ``model`` (a ModelConfig) is, from its family, depth, width and patch."""
    return model_name(model.family, model.depth, model.hidden_size, model.patch_size)
