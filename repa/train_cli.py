"""Arguments of ``repa train``: a preset, typed ``--section.field VALUE`` overrides of any field, a dry run."""
from __future__ import annotations

import argparse
import json

from repa.config import TrainConfig, field_types


# The fast path (issue: performance): numerics within the tolerance stated in tests/test_fast_path.py.
FAST_PATH = {"precision": "bf16", "optim.fused": True, "compile": True}


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="SiT-XL/2-REPA-256",
                   help="named configuration (see `repa presets`); fields below override it")
    p.add_argument("--config", help="a config.json (from a run directory) to start from instead of a preset")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume although the saved run's config differs in fields that are not resume-safe")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if available)")
    p.add_argument("--fast", action="store_true",
                   help="the fast path: bf16 autocast, fused AdamW, torch.compile of the SiT and the teacher "
                        "(sets precision, optim.fused and compile; explicit field flags still win)")
    group = p.add_argument_group("config fields (any field of TrainConfig, dotted)")
    for name, tp in field_types(TrainConfig).items():
        group.add_argument(f"--{name}", dest=f"field:{name}", default=None, metavar="VALUE",
                           help=getattr(tp, "__name__", str(tp)))


def _read_config_file(path: str) -> TrainConfig:
    """A TrainConfig from a config.json; every problem names the file."""
    from repa.config import ConfigError, train_config_from_dict
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path} is a folder; give its config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path} is not valid JSON ({exc}); give the config.json of a run "
                          f"directory, or a preset with --preset") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} holds a JSON {type(data).__name__}, not a config object")
    try:
        return train_config_from_dict(data)
    except (ConfigError, TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"--config {path}: {exc}") from None


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Preset (or --config file), then the given field overrides, then validation (encoders included).

    ``model.encoder_dims`` follows ``--encoders`` unless it is given too: it is derived from the encoder registry.
    """
    from repa.config import apply_overrides, parse_value, validate_train
    from repa.encoders import check_train_encoders, encoder_dims
    from repa.presets import get_preset
    if args.config:
        cfg = _read_config_file(args.config)
    else:
        cfg = get_preset(args.preset)
    types = field_types(TrainConfig)
    if getattr(args, "fast", False):
        cfg = apply_overrides(cfg, FAST_PATH)
    overrides = {key[len("field:"):]: value for key, value in vars(args).items()
                 if key.startswith("field:") and value is not None}
    cfg = apply_overrides(cfg, {k: parse_value(v, types[k], k) for k, v in overrides.items()})
    if "encoders" in overrides and "model.encoder_dims" not in overrides:
        cfg = apply_overrides(cfg, {"model.encoder_dims": encoder_dims(cfg.encoders)})
    validate_train(cfg)
    check_train_encoders(cfg)
    return cfg


def run_train(args: argparse.Namespace) -> int:
    from repa.config import to_json
    cfg = resolve_config(args)
    if args.dry_run:
        print(to_json(cfg))
        return 0
    from repa.train import train
    result = train(cfg, allow_config_change=args.allow_config_change, device=args.device)
    print(f"finished at step {result.step}; last checkpoint: {result.checkpoint}")
    return 0
