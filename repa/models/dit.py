"""DiT (Peebles & Xie 2023) with the REPA projector: SiT's network, conditioned on the integer timestep.

DiT and SiT share every layer (patch embedding, adaLN-Zero blocks, final layer, fixed sin-cos positions) and
every parameter name (``x_embedder``, ``t_embedder.mlp``, ``y_embedder.embedding_table``, ``blocks.*``,
``final_layer.*``, ``pos_embed``), so a released DiT state dict (``DiT-XL-2-256x256.pt``) loads without renaming.
Two things differ:

- time: DiT embeds the diffusion timestep index 0..999 of the improved-DDPM process, not t in [0, 1]. The model
  keeps the package contract ``model(x, t, y)`` with t = timestep / 1000 and embeds 1000 t (pass t in float64,
  as ``repa.diffusion`` does, and the embedded values are exact integers);
- output: with ``learn_sigma`` (the DiT default, set by the ``DiT-*`` presets) the network predicts 2C channels,
  epsilon then the variance interpolation v in [-1, 1] (``repa.diffusion.GaussianDiffusion.p_mean_variance``);
  ``config.prediction`` is ``"epsilon"``.

The REPA projectors read the tokens after block ``encoder_depth`` exactly as in SiT.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import torch

from repa.config import ModelConfig
from repa.models.sit import SiT

TIMESTEP_SCALE = 1000.0   # DiT's timestep index = 1000 t (t = timestep / 1000, repa.diffusion.NUM_TIMESTEPS)


class DiT(SiT):
    """Diffusion transformer: ``model(x, t, y)`` -> (B, C or 2C, H, W) epsilon (and v) at t = timestep / 1000.

    ``forward_features`` returns a ``ModelOutput`` like SiT's (same projectors).
    """

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """DiT embeds the timestep index 1000 t (0..999 on the training grid), not t itself."""
        return self.t_embedder(t * TIMESTEP_SCALE)



# ---- telling released DiT and SiT state dicts apart ----------------------------------------------------------------

def _declared_family(name: str) -> str | None:
    """'DiT' or 'SiT' when ``name`` starts with the family (a model name or a released file name), else None."""
    for family in ("DiT", "SiT"):
        if name.startswith(family + "-") or name.startswith(family + "_"):
            return family
    return None


def resolve_released_family(cfg: ModelConfig, *, path: str | os.PathLike | None = None,
                            args: dict | None = None) -> ModelConfig:
    """The config of a checkpoint without this project's config, with its family (DiT or SiT) settled.

    A released DiT state dict (``DiT-XL-2-256x256.pt``) and the released SiT one (``SiT-XL-2-256x256.pt``) have the
    same keys and shapes, learned-sigma outputs (2C) included, and no REPA projector; only the time conditioning
    differs. The family is therefore read from the stored training args (``args["model"]``, e.g. ``"DiT-XL/2"``),
    else from the file name (the releases are named after their model); without either the config stays as
    inferred (SiT), with a warning when the shapes could also be a DiT's.

    Args:
        cfg: the config inferred from the state-dict shapes (``repa.checkpoint.infer_model_config``).
        path: the checkpoint file.
        args: the training arguments stored in the checkpoint, if any.
    Returns:
        ``cfg``, renamed to the DiT family (an epsilon network) when the checkpoint is a DiT.
    """
    family = _declared_family(str((args or {}).get("model", "")))
    if family is None and path is not None:
        family = _declared_family(Path(path).name)
    if family is None:
        if cfg.learn_sigma and not cfg.encoder_dims:
            warnings.warn(f"{path}: a state dict with learned-sigma outputs and no REPA projector may be a DiT or a "
                          "SiT (identical layouts); loaded as SiT. Name the file DiT-... (as released) to load it "
                          "as a DiT.")
        return cfg
    if family == cfg.family:
        return cfg
    return dataclasses.replace(cfg, name=family + cfg.name[len(cfg.family):],
                               prediction="epsilon" if family == "DiT" else "velocity")


__all__ = ["DiT", "TIMESTEP_SCALE", "resolve_released_family"]
