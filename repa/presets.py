"""Training presets named after the paper's runs; every field can still be overridden from the command line.

``SiT-XL/2-REPA-256`` is the paper's main run (DINOv2-B, encoder depth 8, lambda 0.5, ImageNet 256, batch 256);
``...-vanilla-...`` twins set lambda to 0. ``fmnist-*`` presets train small pixel-space models on Fashion-MNIST
with the offline EfficientNet-Lite0 teacher.
"""
from __future__ import annotations

import dataclasses

from repa.config import ConfigError, DataConfig, ObjectiveConfig, TrainConfig
from repa.encoders import encoder_dims
from repa.models import model_config


def _imagenet(model: str, encoder_depth: int, resolution: int, proj_coeff: float) -> TrainConfig:
    latent = resolution // 8
    tag = "repa" if proj_coeff > 0 else "vanilla"
    teachers = ("dinov2-vit-b",)
    return TrainConfig(
        model=model_config(model, input_size=latent, in_channels=4, num_classes=1000, encoder_depth=encoder_depth,
                           encoder_dims=encoder_dims(teachers)),
        objective=ObjectiveConfig(proj_coeff=proj_coeff),
        data=DataConfig(resolution=resolution),
        encoders=teachers,
        run_dir=f"runs/{model.replace('/', '-').lower()}-{tag}-{resolution}",
        global_batch_size=256, max_steps=400_000, precision="fp16",
        ckpt_every=50_000, log_every=100,
    )


def fmnist(proj_coeff: float = 0.5, depth: int = 6, width: int = 256) -> TrainConfig:
    """Small pixel-space SiT on Fashion-MNIST 28x28 (patch 2: 14x14 tokens), EfficientNet-Lite0 teacher."""
    teachers = ("efficientnet-lite0",)
    return TrainConfig(
        model=model_config("SiT-S/2", depth=depth, hidden_size=width, num_heads=4, input_size=28, in_channels=1,
                           num_classes=10, encoder_depth=2, encoder_dims=encoder_dims(teachers),
                           projector_dim=512, space="pixel"),
        objective=ObjectiveConfig(proj_coeff=proj_coeff),
        data=DataConfig(path="runs/data/fashion-mnist", resolution=28, num_workers=0),
        encoders=teachers,
        run_dir=f"runs/fmnist-{'repa' if proj_coeff > 0 else 'vanilla'}",
        global_batch_size=64, max_steps=2000, ema_decay=0.999, optim=dataclasses.replace(
            TrainConfig().optim, lr=3e-4), precision="fp32", log_every=25, ckpt_every=500, sample_every=0,
    )


PRESETS = {
    "SiT-B/2-REPA-256": lambda: _imagenet("SiT-B/2", 4, 256, 0.5),
    "SiT-B/2-vanilla-256": lambda: _imagenet("SiT-B/2", 4, 256, 0.0),
    "SiT-L/2-REPA-256": lambda: _imagenet("SiT-L/2", 8, 256, 0.5),
    "SiT-L/2-vanilla-256": lambda: _imagenet("SiT-L/2", 8, 256, 0.0),
    "SiT-XL/2-REPA-256": lambda: _imagenet("SiT-XL/2", 8, 256, 0.5),
    "SiT-XL/2-vanilla-256": lambda: _imagenet("SiT-XL/2", 8, 256, 0.0),
    "SiT-XL/2-REPA-512": lambda: _imagenet("SiT-XL/2", 8, 512, 0.5),
    "SiT-XL/2-vanilla-512": lambda: _imagenet("SiT-XL/2", 8, 512, 0.0),
    "fmnist-REPA": lambda: fmnist(0.5),
    "fmnist-vanilla": lambda: fmnist(0.0),
}


def get_preset(name: str) -> TrainConfig:
    """The TrainConfig of preset ``name``; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]()
