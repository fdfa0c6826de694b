"""Features for the representation study: what a diffusion transformer sees at one diffusion time.

For a fixed set of clean samples, ``extract_features`` noises each sample to x_t on the training interpolant with
noise that depends only on (seed, sample position), runs the model once with every requested block exposed, and
collects per block the output tokens (B, N, D) and their global average (B, D); the REPA projector outputs; and
the tokens of any frozen encoders on the clean images. Features go to the CPU in float32 as they are produced, so
a model on a GPU only holds one batch.

The model contract: ``model.forward_features(x_t, t, y, project=True, layers=(1, ..., depth))`` returns
``ModelOutput(prediction, projected, hidden)``, ``hidden`` a dict {1-based block: (B, N, D)}.

The noise follows the network's training: a velocity network (SiT) sees x_t on its interpolant at time t; an
epsilon network (DiT, improved DDPM) sees DDPM's forward process at step round(t * 999) of the 1000-step linear
schedule, its network time that step / 1000 (t = 0 data, 1 noise either way). A REG network (``config.class_token``)
also denoises its teacher's class token: it gets the clean class token (``class_tokens``, from the teacher it was
trained with) noised at the same t with noise of its own, as in training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from repa.paths import get_path
from repa.config import ConfigError

Encoder = Callable[[torch.Tensor], torch.Tensor]   # uint8 images (B, C, H, W) -> tokens (B, N, E)


@dataclass
class FeatureSet:
    """Features of N samples at one diffusion time.

    Attributes:
        t: the diffusion time (0 data, 1 noise).
        layers: the 1-based blocks that were read, ascending.
        labels: (N,) int64 class labels.
        pooled: {block: (N, D)} token means after each block.
        tokens: {block: (N, T, D)} the tokens themselves, or {} when not kept.
        projected_pooled / projected_tokens: per projector (encoder), (N, E) / (N, T, E) (tokens may be []).
        encoder_pooled / encoder_tokens: per encoder passed in, (N, E) / (N, T, E) (tokens may be []).
    """
    t: float
    layers: tuple[int, ...]
    labels: torch.Tensor
    pooled: dict[int, torch.Tensor]
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    projected_pooled: list[torch.Tensor] = field(default_factory=list)
    projected_tokens: list[torch.Tensor] = field(default_factory=list)
    encoder_pooled: list[torch.Tensor] = field(default_factory=list)
    encoder_tokens: list[torch.Tensor] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])


# ---- helpers -----------------------------------------------------------------------------------------------------

def check_time(t: float) -> float:
    """``t`` as a float, or ValueError when it is not a diffusion time in [0, 1]."""
    t = float(t)
    if not 0.0 <= t <= 1.0:
        raise ConfigError(f"t must be a diffusion time in [0, 1] (0 = data, 1 = noise), got {t}")
    return t


def resolve_layers(model: torch.nn.Module, layers: Sequence[int] | None) -> tuple[int, ...]:
    """The requested 1-based blocks (all blocks when None), checked against ``model.config.depth``."""
    depth = getattr(getattr(model, "config", None), "depth", None)
    if layers is None:
        if depth is None:
            raise ValueError("the model has no .config.depth: pass the blocks to read explicitly (layers=...)")
        return tuple(range(1, depth + 1))
    layers = tuple(sorted({int(layer) for layer in layers}))
    if not layers:
        raise ConfigError("layers is empty: give at least one 1-based block index")
    if layers[0] < 1 or (depth is not None and layers[-1] > depth):
        name = getattr(model.config, "name", "the model") if depth is not None else "the model"
        raise ConfigError(f"layers {list(layers)} outside 1..{depth} ({name} has {depth} blocks); block indices "
                         "are 1-based")
    return layers


def sample_noise(shape: Sequence[int], start: int, seed: int) -> torch.Tensor:
    """(B, *shape) standard normal noise; row i depends only on (seed, start + i), not on the batch size."""
    rows = []
    for position in range(start, start + int(shape[0])):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + position)
        rows.append(torch.randn(tuple(shape[1:]), generator=generator))
    return torch.stack(rows)


def noising(model: torch.nn.Module, path: str, t: float) -> Callable:
    """``(x0, noise) -> (x_t, network time (B,))`` at diffusion time ``t`` the way ``model`` was trained (module
    docstring): the interpolant ``path`` for velocity networks, DDPM's forward process for epsilon networks."""
    if getattr(getattr(model, "config", None), "prediction", "velocity") == "epsilon":
        from repa.diffusion.objective import base_diffusion
        process = base_diffusion()

        def ddpm(x0, noise):
            steps = torch.full((x0.shape[0],), round(t * (process.num_timesteps - 1)), device=x0.device)
            return process.q_sample(x0, steps, noise), process.model_time(steps).to(x0.dtype)
        return ddpm
    interpolant = get_path(path)

    def interpolated(x0, noise):
        t_batch = torch.full((x0.shape[0],), t, device=x0.device, dtype=x0.dtype)
        return interpolant.interpolate(x0, noise, t_batch), t_batch
    return interpolated


def _model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


# ---- extraction --------------------------------------------------------------------------------------------------

@torch.no_grad()
def extract_features(model: torch.nn.Module, batches: Iterable[dict], *, t: float, path: str = "linear",
                     layers: Sequence[int] | None = None, encoders: Sequence[Encoder] = (), seed: int = 0,
                     keep_tokens: bool = False, project: bool = True,
                     class_tokens: Callable[[torch.Tensor], torch.Tensor] | None = None) -> FeatureSet:
    """Run ``model`` on noised clean samples and collect per-block, projector and encoder features.

    Args:
        model: a network following the model contract (module docstring); put in eval mode here.
        batches: iterable of dicts with ``"x0"`` (B, C, H, W) clean model-space inputs, ``"label"`` (B,) int64 and,
            when ``encoders`` are given, ``"image"`` uint8 (B, C, H, W) for the encoders.
        t: diffusion time in [0, 1] at which the model sees x_t = alpha(t) x0 + sigma(t) noise.
        path: interpolant name (``repa.paths.get_path``), the one the model was trained with.
        layers: 1-based blocks to read; None reads every block.
        encoders: callables mapping uint8 images to tokens (B, N, E), e.g. ``repa.encoders.load_encoder(...)``.
        seed: noise seed; the noise of the i-th sample depends only on (seed, i).
        keep_tokens: also keep the full token tensors (memory: N * T * D floats per block).
        project: also collect the REPA projector outputs (models without projectors return none).
        class_tokens: REG networks only: uint8 images -> the clean class tokens (B, E) of the training teacher.
    Returns:
        A FeatureSet with float32 CPU tensors.
    Raises:
        ValueError: t outside [0, 1], a block outside 1..depth, a batch without the needed keys, no samples.
    """
    t = check_time(t)
    layers = resolve_layers(model, layers)
    noised = noising(model, path, t)
    reg = bool(getattr(getattr(model, "config", None), "class_token", False))
    if reg and class_tokens is None:
        raise ConfigError("a REG network (model.class_token) denoises its teacher's class token with the image: "
                          "pass class_tokens (images -> (B, E)) of the teacher it was trained with")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    pooled: dict[int, list] = {layer: [] for layer in layers}
    tokens: dict[int, list] = {layer: [] for layer in layers}
    proj_pooled: list[list] = []
    proj_tokens: list[list] = []
    enc_pooled: list[list] = [[] for _ in encoders]
    enc_tokens: list[list] = [[] for _ in encoders]
    labels = []
    position = 0
    unconditional = getattr(getattr(model, "config", None), "num_classes", None) == 0
    try:
        for batch in batches:
            missing = [key for key in ("x0", "label") + (("image",) if encoders else ()) if key not in batch]
            if missing:
                raise ValueError(f"batch is missing {missing}; expected keys 'x0', 'label' and, with encoders, "
                                 f"'image'; got {sorted(batch)}")
            x0 = torch.as_tensor(batch["x0"]).to(device=device, dtype=torch.float32)      # (B, C, H, W)
            y = torch.as_tensor(batch["label"]).to(device=device, dtype=torch.long)       # (B,)
            noise = sample_noise(x0.shape, position, seed).to(device)
            x_t, t_batch = noised(x0, noise)
            cond = None if unconditional else y       # an unconditional network takes no labels
            extra = {}
            if reg:                                   # the class token's own noise: seeded apart from the image's
                cls0 = class_tokens(torch.as_tensor(batch["image"]).to(device)).float()          # (B, E)
                extra["class_token"] = noised(cls0, sample_noise(cls0.shape, position, seed + 1).to(device))[0]
            out = model.forward_features(x_t, t_batch, cond, project=project, layers=layers, **extra)
            for layer in layers:
                h = out.hidden[layer].float()                                             # (B, N, D)
                pooled[layer].append(h.mean(dim=1).cpu())
                if keep_tokens:
                    tokens[layer].append(h.cpu())
            projected = list(out.projected) if project else []
            if not proj_pooled:
                proj_pooled, proj_tokens = [[] for _ in projected], [[] for _ in projected]
            for i, p in enumerate(projected):
                proj_pooled[i].append(p.float().mean(dim=1).cpu())                        # (B, E)
                if keep_tokens:
                    proj_tokens[i].append(p.float().cpu())
            for i, encoder in enumerate(encoders):
                images = torch.as_tensor(batch["image"])
                z = encoder(images.to(device)).float()                                    # (B, N, E)
                enc_pooled[i].append(z.mean(dim=1).cpu())
                if keep_tokens:
                    enc_tokens[i].append(z.cpu())
            labels.append(y.cpu())
            position += x0.shape[0]
    finally:
        model.train(was_training)
    if position == 0:
        raise ValueError("no samples: the batch source yielded nothing")
    cat = torch.cat
    return FeatureSet(
        t=t, layers=layers, labels=cat(labels),
        pooled={layer: cat(v) for layer, v in pooled.items()},
        tokens={layer: cat(v) for layer, v in tokens.items()} if keep_tokens else {},
        projected_pooled=[cat(v) for v in proj_pooled],
        projected_tokens=[cat(v) for v in proj_tokens] if keep_tokens else [],
        encoder_pooled=[cat(v) for v in enc_pooled],
        encoder_tokens=[cat(v) for v in enc_tokens] if keep_tokens else [],
    )


@torch.no_grad()
def encoder_features(encoder: Encoder, batches: Iterable[dict], keep_tokens: bool = False,
                     device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pooled (N, E) and optionally full (N, T, E) tokens of one encoder on the ``"image"`` entries of ``batches``.

    Encoder features do not depend on the diffusion model, so ``repa analyze`` computes them once for all
    checkpoints with this function.
    """
    pooled, tokens = [], []
    for batch in batches:
        images = torch.as_tensor(batch["image"])
        z = encoder(images.to(device) if device is not None else images).float()          # (B, N, E)
        pooled.append(z.mean(dim=1).cpu())
        if keep_tokens:
            tokens.append(z.cpu())
    if not pooled:
        raise ValueError("no samples: the batch source yielded nothing")
    return torch.cat(pooled), (torch.cat(tokens) if keep_tokens else None)


__all__ = ["FeatureSet", "extract_features", "noising", "encoder_features", "check_time", "resolve_layers", "sample_noise"]
