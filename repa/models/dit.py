"""DiT (Peebles & Xie 2023) with the REPA projector: SiT's network, conditioned on the integer timestep.

DiT and SiT share every layer (patch embedding, adaLN-Zero blocks, final layer, fixed sin-cos positions) and
every parameter name (``x_embedder``, ``t_embedder.mlp``, ``y_embedder.embedding_table``, ``blocks.*``,
``final_layer.*``, ``pos_embed``), so a released DiT state dict (``DiT-XL-2-256x256.pt``) loads without renaming
(``repa.models.released`` tells it apart from the released SiT one).
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

import torch

from repa.models.sit import SiT

TIMESTEP_SCALE = 1000.0   # DiT's timestep index = 1000 t (t = timestep / 1000, repa.diffusion.NUM_TIMESTEPS)


class DiT(SiT):
    """Diffusion transformer: ``model(x, t, y)`` -> (B, C or 2C, H, W) epsilon (and v) at t = timestep / 1000.

    ``forward_features`` returns a ``ModelOutput`` like SiT's (same projectors).
    """

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """DiT embeds the timestep index 1000 t (0..999 on the training grid), not t itself."""
        return self.t_embedder(t * TIMESTEP_SCALE)


__all__ = ["DiT", "TIMESTEP_SCALE"]
