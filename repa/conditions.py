"""What a network is conditioned on, as a type: class labels, a caption's text tokens, or nothing.

A condition owns the three things the rest of the code must not know about its kind:

- where its values come from (``batch_key``, the dataset array the loader reads; None for no condition),
- its training-time dropout to the null value (``drop``, classifier-free guidance training, Ho & Salimans 2022),
- its null value for guidance (``null``); a condition without one refuses guidance in one line (``check_guidable``).

The batch, the objectives, guidance and the samplers pass the values (a tensor whose first dimension is the batch,
or None) through without looking inside. The text condition (``TextContext``: a caption's text-encoder tokens, the
empty caption's tokens as its null value) also declares how the loader reads its values (``readers``: one caption
drawn per item from the loader's seeded stream) and takes its null value from the data (``bind``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from repa.config import ConfigError, ModelConfig


class Condition(Protocol):
    """The contract every condition kind implements."""

    batch_key: str | None        # the dataset array holding the values (None: the network sees no condition)
    guidable: bool               # whether classifier-free guidance is defined (the network learned a null value)

    def values(self, batch: dict, device) -> torch.Tensor | None:
        """The condition values of a loaded batch, on ``device``."""

    def drop(self, values: torch.Tensor | None, uniforms: torch.Tensor) -> torch.Tensor | None:
        """Training-time dropout: row i becomes the null value where ``uniforms[i]`` < the dropout probability."""

    def null(self, values: torch.Tensor | None) -> torch.Tensor | None:
        """The null values (unconditional) for a batch shaped like ``values``."""

    def check_guidable(self, cfg_scale: float) -> None:
        """Raise ConfigError when ``cfg_scale`` != 1 asks for guidance that this condition cannot give."""

    @property
    def readers(self) -> dict[str, Callable]:
        """Batch fields the loader computes instead of asking ``get_batch``: name -> ``read(dataset, indices,
        uniforms) -> dict[str, np.ndarray]``, with ``uniforms`` (B,) U(0, 1) of the loader's stream (seed, epoch,
        batch, name) for this rank's rows (``repa.data.loader.BatchLoader``)."""

    def bind(self, source, device=None) -> "Condition":
        """This condition with the null value read from ``source`` (a loaded batch or a dataset), on ``device``
        when given, where the null value is data (the empty caption); the others return themselves."""


@dataclass(frozen=True)
class ClassLabels:
    """Integer class labels 0..num_classes-1; the null label is ``num_classes`` (the extra row of the label table
    that a network trained with dropout > 0 has)."""
    num_classes: int
    dropout: float = 0.0
    batch_key: str = "label"

    @property
    def null_label(self) -> int:
        return self.num_classes

    @property
    def guidable(self) -> bool:
        return self.dropout > 0

    def values(self, batch: dict, device) -> torch.Tensor:
        return batch[self.batch_key].to(device, non_blocking=True)

    def drop(self, values: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        if self.dropout <= 0:
            return values
        return torch.where(uniforms < self.dropout, torch.full_like(values, self.null_label), values)

    def null(self, values: torch.Tensor) -> torch.Tensor:
        return torch.full_like(values, self.null_label)

    def check_guidable(self, cfg_scale: float) -> None:
        if cfg_scale != 1.0 and not self.guidable:
            raise ConfigError(f"cfg_scale={cfg_scale} needs a null class, but this model was built without class "
                              "dropout (model.class_dropout=0); sample with cfg_scale 1")

    readers = property(lambda self: {})      # nothing read beyond get_batch

    def bind(self, source, device=None) -> "ClassLabels":
        return self


@dataclass(frozen=True)
class Unconditional:
    """No condition: the network sees only x_t and t (``model.num_classes = 0``); values are None."""
    batch_key: None = None
    guidable: bool = False

    def values(self, batch: dict, device) -> None:
        return None

    def drop(self, values, uniforms) -> None:
        return None

    def null(self, values) -> None:
        return None

    def check_guidable(self, cfg_scale: float) -> None:
        if cfg_scale != 1.0:
            raise ConfigError(f"cfg_scale={cfg_scale}: an unconditional model (model.num_classes=0) has nothing to "
                              "guide towards; sample with cfg_scale 1")

    readers = property(lambda self: {})      # nothing read beyond get_batch

    def bind(self, source, device=None) -> "Unconditional":
        return self


def read_captions(dataset, indices: np.ndarray, uniforms: np.ndarray) -> dict[str, np.ndarray]:
    """One caption per item: caption floor(u * count) of item i (``dataset.caption_counts``), its tokens
    (B, L, D) as ``"context"``, and the empty caption's (1, L, D) as ``"empty_context"`` (the null value)."""
    counts = np.asarray(dataset.caption_counts)[indices]
    chosen = np.minimum((np.asarray(uniforms) * counts).astype(np.int64), counts - 1)
    return {"context": dataset.get_contexts(indices, chosen),
            "empty_context": np.asarray(dataset.empty_context, dtype=np.float32)[None]}


@dataclass(frozen=True, eq=False)
class TextContext:
    """A caption's text-encoder tokens (B, L, D) float (the REPA reference's MMDiT on MS-COCO: CLIP ViT-L/14's
    last hidden state, L = 77, D = 768). The null value is the empty caption's tokens ``empty`` (L, D): training
    replaces a caption by it with probability ``dropout`` (the reference's ``CFGDataset``: 0.1), and guidance mixes
    against it. ``empty`` is data, not a weight: ``bind`` reads it from a batch (``"empty_context"``) or a
    captioned dataset (``empty_context``); the text encoder gives it for prompts (``repa.text_encoders``)."""
    dropout: float = 0.1
    empty: torch.Tensor | None = None
    batch_key: str = "context"

    @property
    def guidable(self) -> bool:
        return self.dropout > 0

    @property
    def readers(self) -> dict[str, Callable]:
        return {self.batch_key: read_captions}

    def bind(self, source, device=None) -> "TextContext":
        empty = source["empty_context"] if isinstance(source, dict) else getattr(source, "empty_context", source)
        empty = torch.as_tensor(np.asarray(empty) if not isinstance(empty, torch.Tensor) else empty)
        return dataclasses.replace(self, empty=empty.reshape(empty.shape[-2:]).float().to(device))

    def values(self, batch: dict, device) -> torch.Tensor:
        return batch[self.batch_key].to(device, non_blocking=True)

    def drop(self, values: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        if self.dropout <= 0:
            return values
        return torch.where((uniforms < self.dropout).view(-1, 1, 1), self.null(values), values)

    def null(self, values: torch.Tensor) -> torch.Tensor:
        if self.empty is None:
            raise ConfigError("a text condition's null value is the empty caption's tokens: bind it first "
                              "(condition.bind(dataset) or the text encoder's empty_context)")
        if tuple(values.shape[1:]) != tuple(self.empty.shape):
            raise ConfigError(f"caption tokens {tuple(values.shape[1:])} and the empty caption's "
                              f"{tuple(self.empty.shape)} differ in shape; encode both with the same text encoder")
        return self.empty.to(values).expand(values.shape[0], *self.empty.shape)

    def check_guidable(self, cfg_scale: float) -> None:
        if cfg_scale != 1.0 and not self.guidable:
            raise ConfigError(f"cfg_scale={cfg_scale} needs the empty caption as a null value, but this model was "
                              "trained without caption dropout (model.class_dropout=0); sample with cfg_scale 1")


def condition_of(cfg: ModelConfig) -> Condition:
    """The condition a network built from ``cfg`` takes (an MMDiT: the caption tokens, null value unbound)."""
    if cfg.family == "MMDiT":
        return TextContext(cfg.class_dropout)
    if cfg.num_classes == 0:
        return Unconditional()
    return ClassLabels(cfg.num_classes, cfg.class_dropout)


def cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Two batches of condition values as one (guidance doubles the batch); None stays None."""
    return None if a is None else torch.cat([a, b])


__all__ = ["ClassLabels", "Condition", "TextContext", "Unconditional", "cat", "condition_of", "read_captions"]
