"""``repa train``: a preset (or a config file), the given field flags over it, validation, then the run.

The options are ``repa.commands.TrainCommand``; ``base_config`` gives the TrainConfig that the field flags start
from, so ``--help`` shows a preset's own values as the defaults.
"""
from __future__ import annotations

from repa.config import TrainConfig

# The fast path (issue: performance): numerics within the tolerance stated in tests/test_fast_path.py.
FAST_PATH = {"precision": "bf16", "optim.fused": True, "compile": True}


def _read_config_file(path: str) -> TrainConfig:
    """A TrainConfig from a config.json / YAML file (all or some fields; the rest: TrainConfig's defaults)."""
    from repa.config import ConfigError, train_config_from_dict
    from repa.typed_cli import read_config_file
    data = read_config_file(path)
    try:
        if set(data) >= {"model", "objective", "optim", "data"}:        # a whole run config (config.json)
            return train_config_from_dict(data)
        from repa.typed_cli import merge
        return merge(TrainConfig(), data, f"--config {path}")
    except (ConfigError, TypeError, ValueError, KeyError) as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith("--config") else f"--config {path}: {message}") from None


def base_config(preset: str, config_file: str | None, fast: bool) -> TrainConfig:
    """The TrainConfig the field flags override: ``--config FILE`` or the preset, then ``--fast``."""
    from repa.config import apply_overrides
    from repa.presets import get_preset
    cfg = _read_config_file(config_file) if config_file else get_preset(preset)
    return apply_overrides(cfg, FAST_PATH) if fast else cfg


def resolve_config(opts) -> TrainConfig:
    """The parsed TrainConfig, ``model.encoder_dims`` derived from ``--encoders`` when only those changed, then
    validation (encoders included)."""
    from repa.config import apply_overrides, validate_train
    from repa.encoders import check_train_encoders, encoder_dims
    cfg = opts.train
    given = set(opts.given)
    if "encoders" in given and "model.encoder_dims" not in given:
        cfg = apply_overrides(cfg, {"model.encoder_dims": encoder_dims(cfg.encoders)})
    validate_train(cfg)
    check_train_encoders(cfg)
    from repa.preflight import check_logging_packages
    check_logging_packages(cfg)
    return cfg


def run_train(opts) -> int:
    from repa.config import to_json
    cfg = resolve_config(opts)
    if opts.dry_run:
        print(to_json(cfg))
        return 0
    from repa.training import train
    result = train(cfg, allow_config_change=opts.allow_config_change, device=opts.device)
    import os
    if int(os.environ.get("RANK", "0")) == 0:          # the end-of-run line once, not once per torchrun process
        print(f"finished at step {result.step}; last checkpoint: {result.checkpoint}")
    return 0
