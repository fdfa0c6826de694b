"""What a text-to-image network (MMDiT) is sampled with: prompts encoded by the text encoder, or the captions of a
captioned dataset (the reference's MS-COCO protocol, sihyun-yu/REPA ``generate_t2i.py``: one sample per
validation item with one of its captions, guidance against the empty caption on the interval).

``TextOptions`` are the options of ``repa sample`` / ``repa sample-grid`` for such networks; ``text_source``
turns them into a ``TextSource``: the caption tokens of samples (``repa.evaluation.generate.text_contexts`` draws
which caption from (seed, i) alone, so sharded and resumed runs give the same images) and the condition bound to
the empty caption (guidance's null value).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from repa.config import ConfigError
from repa.text_encoders import DEFAULT_TEXT_ENCODER


@dataclass(frozen=True)
class TextOptions:
    """Text-to-image (MMDiT) sampling: where each sample's caption comes from."""
    prompts: Optional[str] = None     # text-to-image models: a file of prompts, one per line (sample i: line i mod P)
    # text-to-image models: a captioned dataset (e.g. MS-COCO val, prepared): sample i takes one caption of item i
    captions: Optional[str] = None
    text_encoder: str = DEFAULT_TEXT_ENCODER  # CLIP text encoder (hub id or folder) for --prompts


@dataclass
class TextSource:
    """The caption tokens of samples and the text condition bound to the empty caption.

    Attributes:
        counts: sample indices (B,) -> how many captions each sample chooses from (B,) (1 for prompts).
        contexts: (sample indices (B,), chosen caption (B,)) -> float32 (B, L, D) caption tokens.
        condition: ``repa.conditions.TextContext`` with ``empty`` set (guidance's null value).
        settings: what determines the captions (recorded in settings.json: a rerun with others is refused).
    """
    counts: Callable[[np.ndarray], np.ndarray]
    contexts: Callable[[np.ndarray, np.ndarray], np.ndarray]
    condition: object
    settings: dict


def read_prompts(path: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped; ConfigError for a missing or empty file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--prompts {path}: no such file; give a text file with one prompt per line")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"--prompts {path}: the file has no prompt; write one prompt per line")
    return prompts


def text_source(config, text: TextOptions | None, *, num: int, device=None, encoder=None) -> TextSource | None:
    """The captions of ``num`` samples of the network described by ``config`` (a ModelConfig).

    None for a network without a text condition (then --prompts / --captions are refused). ``encoder`` is an
    already loaded ``repa.text_encoders.TextEncoder`` (default: ``text.text_encoder`` is loaded).
    """
    from repa.conditions import TextContext, condition_of
    condition = condition_of(config)
    text = text or TextOptions()
    if not isinstance(condition, TextContext):
        if text.prompts or text.captions:
            raise ConfigError(f"{config.name} is not a text-to-image model: --prompts and --captions are for MMDiT "
                              "networks")
        return None
    if bool(text.prompts) == bool(text.captions):
        raise ConfigError(f"{config.name} generates from captions: give --prompts FILE (one prompt per line) or "
                          "--captions DATASET (a captioned dataset, e.g. MS-COCO val), one of them")
    if text.prompts:
        prompts = read_prompts(text.prompts)
        if encoder is None:
            from repa.text_encoders import load_text_encoder
            encoder = load_text_encoder(text.text_encoder, device)
        tokens, empty = encoder.encode(prompts), encoder.empty_context()
        settings = {"prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
                    "text_encoder": str(text.text_encoder)}
        source = TextSource(lambda idx: np.ones(len(idx), np.int64),
                            lambda idx, chosen: tokens[np.asarray(idx) % len(prompts)], None, settings)
    else:
        from repa.data.layouts import open_folder
        from repa.data.protocol import check_text_dataset
        dataset = open_folder(text.captions)          # a prepared folder or U-ViT's MS-COCO features
        check_text_dataset(dataset, config.context_dim)
        if num > len(dataset):
            raise ConfigError(f"--captions {text.captions} has {len(dataset)} items: sample at most that many "
                              f"(one per item), got --num {num}")
        counts, empty = np.asarray(dataset.caption_counts), np.asarray(dataset.empty_context)
        source = TextSource(lambda idx: counts[np.asarray(idx, np.int64)], dataset.get_contexts, None,
                            {"captions": str(Path(text.captions).resolve())})
        tokens = dataset.get_contexts([0], [0])
    if tokens.shape[-1] != config.context_dim or tuple(empty.shape) != tuple(tokens.shape[1:]):
        raise ConfigError(f"the caption tokens are {tuple(tokens.shape[1:])} (empty caption {tuple(empty.shape)}) "
                          f"but {config.name} reads {config.context_dim}-wide tokens: use the text encoder the "
                          "model was trained with")
    source.condition = condition.bind(empty)
    return source


__all__ = ["TextOptions", "TextSource", "read_prompts", "text_source"]
