"""Where a config's values come from, composed in one documented order for every command: the base (a preset, or
the command's defaults), then a file (YAML or JSON with any subset of the fields, or a run's ``config.json``), then
``repa train --fast``'s fields, then the command line's flags (``repa.cli``); a positional argument counts as a flag.

Each source sets some fields; the fields derived from others follow it (``follow``): a model name sets its size,
patch and family fields (``repa.model_names``), a width its heads, the teachers their widths, a new depth SRA's
target block, a new encoder depth HASTE's blocks; a field the same source (or a later one) gives keeps its value,
and the model is then named for what it is (``SiT-6x128/2``).
"""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from repa.config import ConfigError, TrainConfig, _flatten, apply_overrides, from_dict, to_dict, upgrade
from repa.model_names import FAMILY_FIELDS, FAMILY_OBJECTIVE, heads_of, name_of, parse_name


def compose(base: Any, file: str | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """``base`` (a config dataclass instance) with the values of ``file`` and then the dotted ``overrides``
    (``{"model.depth": 4}``); a problem in the file is a ConfigError naming it. A TrainConfig's file values are
    type-checked and its derived fields follow them (``follow``); other commands' values are type-checked after
    the flags (``typed``)."""
    out = base
    if file is not None:
        try:
            data = read_mapping(file)
            if isinstance(base, TrainConfig):            # a run's config.json gives every field: it is that run
                data = upgrade(data)
                out = follow(base, from_dict(TrainConfig, to_dict(merge(base, data))), set(_flatten(data)))
            else:
                out = merge(out, data)
        except ConfigError as exc:
            raise ConfigError(f"--config {file}: {exc}") from None
    return apply_overrides(out, overrides) if overrides else out


def given(argv: list[str]) -> set[str]:
    """The dotted fields a command line's flags name (``--model.hidden-size 4`` -> ``model.hidden_size``;
    ``--model.no-learn-sigma`` -> ``model.learn_sigma``)."""
    out = set()
    for token in argv:
        if token.startswith("--"):
            section, dot, name = token[2:].partition("=")[0].replace("-", "_").rpartition(".")
            out.add(section + dot + (name[3:] if name.startswith("no_") else name))
    return out


def follow(before: TrainConfig, after: TrainConfig, set_here: set[str]) -> TrainConfig:
    """``after`` (``before`` with one source's values, ``set_here`` the dotted fields that source gave) with every
    field derived from a changed field derived again, unless the source gave it too (module docstring); the model
    is renamed for what it is."""
    m, o, c = after.model, after.objective, after
    model, objective = {}, {}

    def derive(section: dict, prefix: str, values: dict) -> None:
        section.update({k: v for k, v in values.items() if prefix + k not in set_here})
    new, old = _parts(m.name), _parts(before.model.name)
    if m.name != before.model.name and new:         # an unknown name: validation reports it with the rest
        if (new["depth"], new["hidden_size"]) != (old.get("depth"), old.get("hidden_size")):
            derive(model, "model.", {k: new[k] for k in ("depth", "hidden_size")})
        if new["patch_size"] != old.get("patch_size"):
            derive(model, "model.", {"patch_size": new["patch_size"]})
        if new["family"] != old.get("family"):
            derive(model, "model.", FAMILY_FIELDS.get(new["family"], {}))
            derive(objective, "objective.", {"kind": FAMILY_OBJECTIVE.get(new["family"], o.kind)})
    m = dataclasses.replace(m, **model)
    if m.hidden_size != before.model.hidden_size:   # the heads follow the width (the papers' counts, else 64-d)
        derive(model, "model.", {"num_heads": heads_of(m.hidden_size)})
    m = dataclasses.replace(m, **model)
    if o.target == "self":                          # SRA: the model's own width; the EMA block keeps its place
        if m.hidden_size != before.model.hidden_size or o.target != before.objective.target:
            derive(model, "model.", {"encoder_dims": (m.hidden_size,)})
        moved = (m.depth, m.encoder_depth) != (before.model.depth, before.model.encoder_depth)
        if moved and m.encoder_depth < m.depth:
            scaled = round(before.objective.self_depth * m.depth / max(before.model.depth, 1))
            derive(objective, "objective.", {"self_depth": min(max(scaled, m.encoder_depth + 1), m.depth)})
    elif c.encoders != before.encoders:
        from repa.encoders import encoder_dims
        try:
            derive(model, "model.", {"encoder_dims": encoder_dims(c.encoders)})
        except ConfigError:
            pass                                    # an unknown teacher: reported with the config's other problems
    if (o.attn_coeff > 0 and m.encoder_depth != before.model.encoder_depth and o.attn_layers
            and "objective.attn_layers" not in set_here):
        n = min(len(o.attn_layers), m.encoder_depth)  # HASTE: the n blocks up to the projectors' block...
        derive(objective, "objective.", {"attn_layers": tuple(range(m.encoder_depth - n + 1, m.encoder_depth + 1)),
                                         "attn_teacher_layers": o.attn_teacher_layers[-n:]})  # ...with the deepest
    m = dataclasses.replace(m, **model)
    m = dataclasses.replace(m, name=name_of(m)) if _parts(m.name) else m
    return dataclasses.replace(after, model=m, objective=dataclasses.replace(o, **objective))


def _parts(name: str) -> dict:
    try:
        return parse_name(name)
    except ConfigError:
        return {}


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
    updates a nested section, a list becomes a tuple; a section whose flags carry no prefix (``repa sample``'s
    ``--steps``) takes its fields by the same names; unknown names raise ConfigError. The values are not
    type-checked here (``from_dict(type(result), to_dict(result))`` does that)."""
    data, flat = _lift(base, data)
    names = [f.name for f in dataclasses.fields(base)]
    if set(data) - set(names):
        known = sorted(set(names) - set(flat)) + sorted(n for inner in flat.values() for n in inner)
        raise ConfigError(f"unknown option(s) {sorted(set(data) - set(names))}; known: {known}")
    return dataclasses.replace(base, **{k: merge(getattr(base, k), v) if isinstance(v, dict) and
                                        dataclasses.is_dataclass(getattr(base, k)) else
                                        tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _lift(base: Any, data: dict) -> tuple[dict, dict]:
    """``data`` with the keys of unprefixed sections (tyro's ``arg(name="")``) moved into them, and those sections'
    field names."""
    hints, out = typing.get_type_hints(type(base), include_extras=True), dict(data)
    flat = {f.name: [g.name for g in dataclasses.fields(getattr(base, f.name))] for f in dataclasses.fields(base)
            if dataclasses.is_dataclass(getattr(base, f.name))
            and any(getattr(m, "name", None) == "" for m in getattr(hints[f.name], "__metadata__", ()))}
    for section, inner in flat.items():
        lifted = {k: out.pop(k) for k in list(out) if k in inner and k not in hints}
        if lifted:
            out[section] = {**(out.get(section) or {}), **lifted}
    return out, flat
