"""The frozen teachers of a training run: which encoders run, which read the dataset's token cache, and what they
give an objective for a batch (tokens, attention maps, class tokens).

An objective says what it needs (``TeacherNeeds``); ``Teachers.load`` decides, per encoder, whether the token
cache can serve it (attention maps and a ViT's class token are never cached: that teacher runs live), and loads
only the encoders that run live.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from repa.config import ConfigError, TrainConfig
from repa.encoders import check_train_encoders, load_encoder, pool_tokens, pooled_class_token
from repa.utils import autocast_context


@dataclass(frozen=True)
class TeacherNeeds:
    """What an objective asks of the teachers for a run."""
    tokens: bool = False                      # patch tokens (B, N, E) of the clean images, one set per encoder
    attention: tuple[int, ...] = ()           # 1-based teacher blocks whose attention maps are needed (HASTE)
    class_token: bool = False                 # the teacher's class token (B, E) (REG)

    @property
    def any(self) -> bool:
        return self.tokens or bool(self.attention) or self.class_token


class Teachers:
    """The configured encoders with, per encoder, the token-cache batch key (None: the encoder runs live)."""

    def __init__(self, encoders: list, cache_keys: list, precision: str = "fp32"):
        self.encoders, self.cache_keys, self.precision = encoders, cache_keys, precision

    @classmethod
    def load(cls, cfg: TrainConfig, needs: TeacherNeeds, dataset, encoders=None, device="cpu") -> "Teachers":
        """The teachers of ``cfg`` for ``needs`` on ``dataset``: given ``encoders`` objects (uint8 images ->
        (B, N, E)), or loaded by name; none when nothing is needed."""
        if not needs.any:
            return cls([], [], cfg.precision)
        grid = cfg.model.grid_size
        live = [bool(needs.attention) or (needs.class_token and not pooled_class_token(name)) for name in cfg.encoders]
        keys = [dataset.token_cache_key(name, dataset.resolution, grid)
                if cfg.data.use_token_cache and not run_live else None
                for name, run_live in zip(cfg.encoders, live)]
        if encoders is None:
            check_train_encoders(cfg)
            weights = cfg.encoder_weights or (None,) * len(cfg.encoders)
            encoders = [None if key is not None else
                        load_encoder(name, resolution=dataset.resolution, token_grid=grid, weights=w or None,
                                     device=device)
                        for name, key, w in zip(cfg.encoders, keys, weights)]
        if len(encoders) != len(cfg.encoders):
            raise ConfigError(f"{len(encoders)} encoder objects given for {len(cfg.encoders)} configured encoders")
        encoders = [e.to(device) if isinstance(e, torch.nn.Module) else e for e in encoders]
        if cfg.compile:
            encoders = [torch.compile(e) if e is not None else None for e in encoders]
        return cls(list(encoders), keys, cfg.precision)

    @property
    def batch_keys(self) -> list[str]:
        """The dataset arrays the teachers read: their caches, and the images when one runs live."""
        keys = [k for k in self.cache_keys if k is not None]
        return keys + (["image"] if any(k is None for k in self.cache_keys) else [])

    def outputs(self, batch: dict, device, *, attention: tuple[int, ...] = (), class_token: bool = False):
        """Teacher outputs for the clean images of ``batch``: tokens (one (B, N, E) float32 per encoder, from the
        cache when valid), the attention maps of blocks ``attention`` (a list of (B, H, N, N); computed live), and
        with ``class_token`` the class tokens (B, E) (pooled from cached tokens, else computed live)."""
        tokens, maps, classes = [], None, None
        for encoder, key in zip(self.encoders, self.cache_keys):
            if key is not None:
                tokens.append(batch[key].to(device, non_blocking=True).float())
                if class_token:                    # cached only for teachers whose class token is the pooled one
                    classes = pool_tokens(tokens[-1])
                continue
            with torch.no_grad(), autocast_context(self.precision, device):
                images = batch["image"].to(device, non_blocking=True)
                if attention:
                    got, maps = encoder.tokens_and_attention(images, attention)
                    tokens.append(got)
                elif class_token:
                    got, classes = encoder.tokens_and_class_token(images)
                    tokens.append(got.float())
                    classes = classes.float()
                else:
                    tokens.append(encoder(images).float())
        return tokens, maps, classes


__all__ = ["TeacherNeeds", "Teachers"]
