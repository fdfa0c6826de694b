"""What a network is conditioned on, as a type: class labels, or nothing (an unconditional model).

A condition owns the three things the rest of the code must not know about its kind:

- where its values come from (``batch_key``, the dataset array the loader reads; None for no condition),
- its training-time dropout to the null value (``drop``, classifier-free guidance training, Ho & Salimans 2022),
- its null value for guidance (``null``); a condition without one refuses guidance in one line (``check_guidable``).

The batch, the objectives, guidance and the samplers pass the values (a tensor whose first dimension is the batch,
or None) through without looking inside. A text condition (a sequence of text-encoder tokens with the empty
caption's tokens as its null value) is one more class with these members.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

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


def condition_of(cfg: ModelConfig) -> Condition:
    """The condition a network built from ``cfg`` takes."""
    if cfg.num_classes == 0:
        return Unconditional()
    return ClassLabels(cfg.num_classes, cfg.class_dropout)


def cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Two batches of condition values as one (guidance doubles the batch); None stays None."""
    return None if a is None else torch.cat([a, b])


__all__ = ["ClassLabels", "Condition", "Unconditional", "cat", "condition_of"]
