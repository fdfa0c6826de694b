"""Checkpoints without this project's config: which network they hold, and willisma/SiT's time convention.

Three kinds of such checkpoints share one set of parameter names and shapes:

- ``repa``: REPA's SiT (github.com/sihyun-yu/REPA): training checkpoints ``model``/``ema``/``opt``/``args``/
  ``steps``; C velocity outputs and one projector per encoder; t = 0 is data, t = 1 noise (repa's convention).
- ``sit``: willisma/SiT (Ma et al. 2024): the released ``SiT-XL-2-256x256.pt`` (a bare state dict) and its training
  checkpoints (``model``/``ema``/``opt``/``args``, no ``steps``); learned-sigma outputs (2C, of which its own
  ``forward`` keeps the first C), no projector, and the opposite time: x_t = t x + (1 - t) e, v = x - e,
  integrated from t = 0 to 1.
- ``dit``: facebookresearch/DiT (Peebles & Xie 2023): the released ``DiT-XL-2-256x256.pt`` (a bare state dict) and
  its training checkpoints; epsilon and the variance interpolation (2C), conditioned on the timestep index.

``resolve_origin`` settles which one a checkpoint is (the rule is in its docstring; the ``origin`` argument of
``repa.load_model`` overrides it). A ``sit`` network is built as ``ReleasedSiT``, which converts to repa's convention
at every call, so every sampler, the analysis and the training objective see t = 0 as data and dx/dt as the output.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import torch

from repa.config import ConfigError, ModelConfig
from repa.models.sit import ModelOutput, SiT

ORIGINS = ("auto", "repa", "sit", "dit")


class ReleasedSiT(SiT):
    """willisma/SiT's network in repa's convention: ``model(x, t, y)`` = -v_SiT(x, 1 - t, y)[:, :C].

    With repa's t (0 data, 1 noise) the same state x_t = (1 - t) x + t e is willisma/SiT's x_s at s = 1 - t, and
    dx/dt = -dx/ds, so the network is evaluated at 1 - t and its velocity negated. The learned-sigma channels (2C
    outputs) are dropped, as willisma/SiT's own ``forward`` drops them (they are never trained): the prediction has
    C channels. The hidden tokens and projector outputs are those of the network at 1 - t (the same noise level).
    The state dict is the released one, unchanged.
    """

    def forward_features(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, project: bool = False,
                         layers: tuple[int, ...] | range = (), stop_after: int | None = None) -> ModelOutput:
        out = super().forward_features(x, 1 - t, y, project=project, layers=layers, stop_after=stop_after)
        if out.prediction is not None:
            out.prediction = -out.prediction[:, : self.config.in_channels]
        return out


# What each origin makes of the inferred config.
_ORIGIN_FIELDS = {
    "repa": {"family": "SiT", "prediction": "velocity", "time_convention": "data_at_0"},
    "sit": {"family": "SiT", "prediction": "velocity", "time_convention": "noise_at_0"},
    "dit": {"family": "DiT", "prediction": "epsilon", "time_convention": "data_at_0"},
}


def _declared_family(name: str) -> str | None:
    """'DiT' or 'SiT' when ``name`` starts with the family (a model name or a released file name), else None."""
    for family in ("DiT", "SiT"):
        if name.startswith(family + "-") or name.startswith(family + "_"):
            return family
    return None


def detect_origin(cfg: ModelConfig, *, path: str | os.PathLike | None = None, args: dict | None = None) -> str:
    """The origin (``repa``, ``sit`` or ``dit``) of a checkpoint without this project's config.

    The rule, in order:

    1. The family is the prefix of the stored training argument ``args["model"]`` (``"DiT-XL/2"``), else of the
       file name (both releases are named after their model: ``DiT-XL-2-256x256.pt``, ``SiT-XL-2-256x256.pt``),
       else SiT. A DiT is ``dit``.
    2. A SiT with REPA projectors, or with C outputs (REPA's SiT never has a learned sigma), is ``repa``.
    3. A SiT with learned-sigma outputs (2C) and no projector is ``sit`` (willisma/SiT builds ``learn_sigma=True``
       by default). Without a declared family such a state dict could also be a DiT (identical layouts): it is
       loaded as ``sit`` with a warning.

    Args:
        cfg: the config inferred from the state-dict shapes (``repa.checkpoint.infer_model_config``).
        path: the checkpoint file.
        args: the training arguments stored in the checkpoint, if any.
    """
    family = _declared_family(str((args or {}).get("model", "")))
    if family is None and path is not None:
        family = _declared_family(Path(path).name)
    if family == "DiT":
        return "dit"
    if cfg.encoder_dims or not cfg.learn_sigma:
        return "repa"
    if family is None:
        warnings.warn(f"{path}: a state dict with learned-sigma outputs and no REPA projector may be a released "
                      "DiT or a released SiT (identical layouts); loaded as willisma/SiT's (origin 'sit'). Name the "
                      "file DiT-... (as released) or pass origin='dit' to load it as a DiT.")
    return "sit"


def resolve_origin(cfg: ModelConfig, origin: str = "auto", *, path: str | os.PathLike | None = None,
                   args: dict | None = None) -> ModelConfig:
    """``cfg`` (inferred from a checkpoint without this project's config) with family, prediction and time
    convention set for ``origin``: ``auto`` (``detect_origin``), ``repa``, ``sit`` or ``dit``.

    Raises ConfigError for an unknown origin, and for a willisma/SiT checkpoint whose stored arguments say it was
    trained on another path than ``Linear`` or to predict other than the velocity (only that one is converted).
    """
    if origin not in ORIGINS:
        raise ConfigError(f"origin must be one of {ORIGINS}, got {origin!r}")
    if cfg.family == "MMDiT" and origin in ("auto", "repa"):   # the reference's text-to-image network
        return cfg
    if origin == "auto":
        origin = detect_origin(cfg, path=path, args=args)
    fields = dict(_ORIGIN_FIELDS[origin])
    if origin == "sit":
        args = args or {}
        path_type, prediction = str(args.get("path_type", "Linear")), str(args.get("prediction", "velocity"))
        if path_type.lower() != "linear" or prediction not in ("velocity", "v"):
            raise ConfigError(f"{path}: a willisma/SiT checkpoint trained with path_type={path_type!r}, "
                              f"prediction={prediction!r}; only the Linear path with velocity prediction is "
                              "converted to repa's convention")
    family = fields.pop("family")
    name = cfg.name if family == cfg.family else family + cfg.name[len(cfg.family):]
    return dataclasses.replace(cfg, name=name, **fields)


__all__ = ["ORIGINS", "ReleasedSiT", "detect_origin", "resolve_origin"]
