"""Where a config's values come from, composed in one documented order: the base (a preset, or a command's
defaults), then a file (YAML or JSON with any subset of the fields, or a run's ``config.json``), then overrides
(``repa train --fast``'s fields); the command line's flags come last (``repa.cli``).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from repa.config import ConfigError, TrainConfig, apply_overrides, from_dict, to_dict, train_config_from_dict


def compose(base: Any, file: str | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """``base`` (a config dataclass instance) with the values of ``file`` and then the dotted ``overrides``
    (``{"model.depth": 4}``); a problem in the file is a ConfigError naming it. The file's values are merged, not yet
    type-checked (``from_dict(type(result), to_dict(result))`` does that)."""
    out = base
    if file is not None:
        try:
            data = read_mapping(file)
            if isinstance(base, TrainConfig) and {"model", "objective", "optim", "data"} <= set(data):
                data = to_dict(train_config_from_dict(data))           # a whole run config (config.json)
            out = merge(out, data)
        except ConfigError as exc:
            raise ConfigError(f"--config {file}: {exc}") from None
    return apply_overrides(out, overrides) if overrides else out


def typed(config: Any, file: str) -> Any:
    """``config`` rebuilt with every field type-checked (values merged from ``file`` were not); ConfigError naming
    the file and the field."""
    try:
        return from_dict(type(config), to_dict(config))
    except ConfigError as exc:
        raise ConfigError(f"--config {file}: {exc}") from None


def read_mapping(path: str) -> dict:
    """The mapping of option values in a YAML or JSON file (ConfigError: not text, not valid, not a mapping)."""
    import yaml
    with open(path, encoding="utf-8") as f:
        try:
            text = f.read()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"not a text file ({exc})") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.endswith(".json") else "YAML/JSON"
        raise ConfigError(f"not valid {kind} ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"holds a {type(data).__name__}, not a mapping of options")
    return data


def merge(base: Any, data: dict) -> Any:
    """``base`` (a dataclass instance) with ``data``'s values (as read by ``read_mapping``): a nested mapping
    updates a nested section, a list becomes a tuple; unknown names raise ConfigError. The values are not
    type-checked here (``from_dict(type(result), to_dict(result))`` does that)."""
    names = [f.name for f in dataclasses.fields(base)]
    if set(data) - set(names):
        raise ConfigError(f"unknown option(s) {sorted(set(data) - set(names))}; known: {names}")
    return dataclasses.replace(base, **{k: merge(getattr(base, k), v) if isinstance(v, dict) and
                                        dataclasses.is_dataclass(getattr(base, k)) else
                                        tuple(v) if isinstance(v, list) else v for k, v in data.items()})
