"""Training presets named after the paper's runs; every field can still be overridden from the command line.

``SiT-XL/2-REPA-256`` is the paper's main run (DINOv2-B, encoder depth 8, lambda 0.5, ImageNet 256, batch 256);
``...-vanilla-...`` twins set lambda to 0. ``fmnist-*`` presets train small pixel-space models on Fashion-MNIST
with the offline EfficientNet-Lite0 teacher.

The successors of REPA (docs/VARIANTS.md) change only what their reference code changes from that run:
``-iREPA-`` (conv projector, spatially normalised targets), ``-SRA-`` (no teacher: the model's EMA),
``-HASTE-`` (attention-map alignment, both terms stopped at 250K steps), ``-REG-`` (the teacher's class token
denoised with the image, weight 0.03), ``-REPA-E-`` (the VAE tuned end to end: docs/REPA-E.md). ``MMDiT-REPA-COCO-256`` is the reference's text-to-image run on MS-COCO.
"""
from __future__ import annotations

import dataclasses

from repa.config import ConfigError, DataConfig, ObjectiveConfig, TrainConfig
from repa.encoders import encoder_dims
from repa.model_names import FAMILY_OBJECTIVE
from repa.models import model_config


def _imagenet(model: str, encoder_depth: int, resolution: int, proj_coeff: float) -> TrainConfig:
    latent = resolution // 8
    tag = "repa" if proj_coeff > 0 else "vanilla"
    teachers = ("dinov2-vit-b",)
    return TrainConfig(
        model=model_config(model, input_size=latent, in_channels=4, num_classes=1000, encoder_depth=encoder_depth,
                           encoder_dims=encoder_dims(teachers)),
        objective=ObjectiveConfig(kind=FAMILY_OBJECTIVE[model.split("-")[0]], proj_coeff=proj_coeff),
        data=DataConfig(resolution=resolution),
        encoders=teachers,
        run_dir=f"runs/{model.replace('/', '-').lower()}-{tag}-{resolution}",
        global_batch_size=256, max_steps=400_000, precision="fp16",
        ckpt_every=50_000, log_every=100,
    )


def irepa(model: str, encoder_depth: int, resolution: int = 256) -> TrainConfig:
    """iREPA (End2End-Diffusion/iREPA, ``ldm/configs/irepa.yaml``): 3x3 conv projector, spatial normalisation
    with gamma 0.6 (the code's default for SiT), lambda 1.0; everything else as the REPA run."""
    base = _imagenet(model, encoder_depth, resolution, 1.0)
    return dataclasses.replace(
        base, model=dataclasses.replace(base.model, projector="conv", projector_kernel=3),
        objective=dataclasses.replace(base.objective, target_norm="spatial", target_norm_gamma=0.6),
        run_dir=base.run_dir.replace("-repa-", "-irepa-"))


IMAGENET_TRAIN_IMAGES = 1_281_167


def sra(model: str, student_block: int, ema_block: int, resolution: int = 256) -> TrainConfig:
    """SRA (vvvvvjdy/SRA, ``SiT-SRA/train.py``, the loss of the paper and of the released checkpoints): no teacher;
    block ``student_block`` through SRA's 2-layer head (``ap_head``) aligned with block ``ema_block`` of the EMA at
    t - 0.2 u by smooth-L1 (beta 0.05), weighted 2 * 0.1 ** f(epoch): f = 1 through epoch 149, then
    1 + (epoch - 149) / 1000 (at 512 px: 99 and 800); an epoch is ImageNet's 1,281,167 images at batch 256
    (5004 steps, the reference's drop_last loader). ``objective.self_loss=cosine`` with ``proj_coeff=0.5`` is the
    code's later default."""
    base = _imagenet(model, student_block, resolution, 2.0)
    start, span = (149, 1000) if resolution == 256 else (99, 800)
    return dataclasses.replace(
        base, encoders=(), model=dataclasses.replace(base.model, encoder_dims=(base.model.hidden_size,),
                                                     projector="sra"),
        objective=dataclasses.replace(base.objective, target="self", self_depth=ema_block, self_time_gap=0.2,
                                      self_loss="smooth_l1",
                                      self_epoch_steps=IMAGENET_TRAIN_IMAGES // base.global_batch_size,
                                      self_decay_start=start, self_decay_epochs=span),
        run_dir=base.run_dir.replace("-repa-", "-sra-"))


def haste(model: str, resolution: int = 256, stop_step: int = 250_000) -> TrainConfig:
    """HASTE (NUS-HPC-AI-Lab/HASTE, README's SiT-XL/2 run): REPA at depth 8 plus attention alignment (weight 0.5)
    of model blocks 5-8 with DINOv2-B blocks 9-12, both terms off from ``stop_step``."""
    base = _imagenet(model, 8, resolution, 0.5)
    return dataclasses.replace(
        base, objective=dataclasses.replace(base.objective, attn_coeff=0.5, attn_layers=(5, 6, 7, 8),
                                            attn_teacher_layers=(9, 10, 11, 12), align_stop_step=stop_step),
        run_dir=base.run_dir.replace("-repa-", "-haste-"))


def reg(model: str, encoder_depth: int, resolution: int = 256) -> TrainConfig:
    """REG (Martinser/REG, ``train.sh``): REPA's run with DINOv2-B's class token as one extra token, denoised with
    the image, its velocity loss weighted 0.03 (``--cls``); encoder depth 8 for SiT-L/XL, 4 for SiT-B."""
    base = _imagenet(model, encoder_depth, resolution, 0.5)
    return dataclasses.replace(
        base, model=dataclasses.replace(base.model, class_token=True),
        objective=dataclasses.replace(base.objective, class_token_coeff=0.03),
        run_dir=base.run_dir.replace("-repa-", "-reg-"))


def coco(proj_coeff: float, resolution: int = 256) -> TrainConfig:
    """The reference's text-to-image run (sihyun-yu/REPA ``train_t2i.py`` defaults, README's command): MMDiT of
    depth 24 (hidden 768, 24 heads) on MS-COCO 2014 with CLIP ViT-L/14 caption tokens (77 x 768), caption dropout 0.1
    to the empty caption, DINOv2-B, encoder depth 8, lambda 0.5, batch 256, lr 1e-4, fp16, 400K steps."""
    teachers = ("dinov2-vit-b",)
    return TrainConfig(
        model=model_config("MMDiT-24x768/2", input_size=resolution // 8, in_channels=4, class_dropout=0.1,
                           context_dim=768, encoder_depth=8, encoder_dims=encoder_dims(teachers)),
        objective=ObjectiveConfig(proj_coeff=proj_coeff),
        data=DataConfig(resolution=resolution),
        encoders=teachers,
        run_dir=f"runs/mmdit-{'repa' if proj_coeff > 0 else 'vanilla'}-coco-{resolution}",
        global_batch_size=256, max_steps=400_000, precision="fp16", ckpt_every=50_000, log_every=100,
    )


def repa_e(model: str, encoder_depth: int, resolution: int = 256) -> TrainConfig:
    """REPA-E (End2End-Diffusion/REPA-E, README's ``train_repae.py`` run): REPA's run (lambda 0.5, DINOv2-B,
    batch 256, fp16, 400K steps) with the SD-VAE tuned end to end (``repa.e2e_config`` defaults: VAE alignment
    weight 1.5, L1 + LPIPS + KL 1e-6 + patch GAN 0.1, VAE and discriminator learning rates 1e-4, BN momentum 0.1)."""
    base = _imagenet(model, encoder_depth, resolution, 0.5)
    return dataclasses.replace(base, objective=dataclasses.replace(base.objective, kind="repa-e"),
                               run_dir=base.run_dir.replace("-repa-", "-repa-e-"))


def fmnist(proj_coeff: float = 0.5, depth: int = 6, width: int = 256) -> TrainConfig:
    """Small pixel-space SiT on Fashion-MNIST 28x28 (patch 2: 14x14 tokens), EfficientNet-Lite0 teacher."""
    teachers = ("efficientnet-lite0",)
    return TrainConfig(
        # a custom size, named for what it is (the paper's SiT-S is 12 x 384)
        model=model_config(f"SiT-{depth}x{width}/2", num_heads=4, input_size=28, in_channels=1, num_classes=10,
                           encoder_depth=2, encoder_dims=encoder_dims(teachers), projector_dim=512, space="pixel"),
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
    # DiT with the improved-DDPM objective (epsilon, learned variance): the SiT runs with the DiT family (docs/DIT.md)
    "DiT-B/2-REPA-256": lambda: _imagenet("DiT-B/2", 4, 256, 0.5),
    "DiT-B/2-vanilla-256": lambda: _imagenet("DiT-B/2", 4, 256, 0.0),
    "DiT-XL/2-REPA-256": lambda: _imagenet("DiT-XL/2", 8, 256, 0.5),
    "DiT-XL/2-vanilla-256": lambda: _imagenet("DiT-XL/2", 8, 256, 0.0),
    "SiT-B/2-iREPA-256": lambda: irepa("SiT-B/2", 4),
    "SiT-XL/2-iREPA-256": lambda: irepa("SiT-XL/2", 8),
    "SiT-B/2-SRA-256": lambda: sra("SiT-B/2", 4, 8),
    "SiT-XL/2-SRA-256": lambda: sra("SiT-XL/2", 8, 20),
    "SiT-XL/2-HASTE-256": lambda: haste("SiT-XL/2"),
    "SiT-B/2-REG-256": lambda: reg("SiT-B/2", 4),
    "SiT-XL/2-REG-256": lambda: reg("SiT-XL/2", 8),
    "MMDiT-REPA-COCO-256": lambda: coco(0.5),
    "MMDiT-vanilla-COCO-256": lambda: coco(0.0),
    "SiT-B/2-REPA-E-256": lambda: repa_e("SiT-B/2", 4),
    "SiT-XL/2-REPA-E-256": lambda: repa_e("SiT-XL/2", 8),
    "fmnist-REPA": lambda: fmnist(0.5),
    "fmnist-vanilla": lambda: fmnist(0.0),
}


def get_preset(name: str) -> TrainConfig:
    """The TrainConfig of preset ``name``; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def describe() -> str:
    """A plain-text table of the presets (``repa presets``): model, encoder depth, lambda, resolution, batch, the
    teacher the objective runs ("none": vanilla twins keep the encoder only for the projectors' widths)."""
    from repa.objectives import OBJECTIVES      # teacher: the encoders the objective runs (vanilla: none, lambda 0)
    lines = [f"{'preset':24s} {'model':10s} {'enc. depth':>10s} {'lambda':>6s} {'res':>4s} {'batch':>5s}  teacher"]
    for name, make in PRESETS.items():
        c = make()
        used = ",".join(c.encoders) if OBJECTIVES[c.objective.kind].teacher_needs(c).any else "none"
        lines.append(f"{name:24s} {c.model.name:10s} {c.model.encoder_depth:10d} {c.objective.proj_coeff:6.2f} "
                     f"{c.data.resolution:4d} {c.global_batch_size:5d}  {used}")
    return "\n".join(lines)
