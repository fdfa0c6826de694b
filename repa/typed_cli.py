"""Every ``repa`` command's options come from one typed dataclass, parsed by tyro (https://brentyi.github.io/tyro).

What a command gets from its dataclass: flags in one style (``--max-steps``, ``--model.encoder-depth``; the
underscore spelling is accepted too), ``--help`` with each field's default and the description written next to
the field in the code, ``Literal`` fields as choices, "Perhaps you meant" for a mistyped flag, and ``--config FILE``
(YAML or JSON) for any of its fields (flags given with it override the file).

Parse errors become one line (``repa <command>: error: ...``, exit 2) like every other user error. A few spellings
of earlier versions keep working: ``--flag true|false`` for booleans (now ``--flag`` / ``--no-flag``) and
comma-separated lists (``--encoders a,b``; now ``--encoders a b``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import typing
from typing import Any

from repa.config import ConfigError, from_dict, to_dict

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_BOX = "│╭╮╰╯─┃┏┓┗┛━"


class UsageError(ConfigError):
    """The command line does not parse (unknown flag, bad value, missing argument)."""


def _unwrap(tp: Any) -> tuple[Any, str | None]:
    """(inner type, the tyro ``arg(name=...)`` when Annotated with one)."""
    name = None
    if typing.get_origin(tp) is typing.Annotated:
        args = typing.get_args(tp)
        for meta in args[1:]:
            name = getattr(meta, "name", name)
        tp = args[0]
    if typing.get_origin(tp) is typing.Annotated:      # tyro.conf markers nest Annotated
        inner, inner_name = _unwrap(tp)
        return inner, name if name is not None else inner_name
    return tp, name


def flag_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """``normalised flag name -> field type`` for a (nested) dataclass, flattening fields marked ``name=""``."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        tp, name = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out.update(flag_types(tp, prefix if name == "" else f"{prefix}{f.name}."))
        else:
            out[(prefix + f.name).replace("-", "_")] = tp
    return out


def _is_bool(tp: Any) -> bool:
    return tp is bool


def _is_tuple(tp: Any) -> bool:
    for arm in typing.get_args(tp) if typing.get_origin(tp) is typing.Union else (tp,):
        if typing.get_origin(arm) is tuple:
            return True
    return False


def legacy_spellings(argv: list[str], types: dict[str, Any]) -> list[str]:
    """Rewrite ``--flag true`` (booleans) and ``--list a,b`` (tuples) into tyro's ``--flag`` and ``--list a b``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, inline = token.partition("=")
        key = name[2:].replace("-", "_") if name.startswith("--") else None
        tp = types.get(key) if key else None
        if tp is not None and _is_bool(tp):
            value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else None)
            if value is not None and value.lower() in _TRUE | _FALSE:
                out.append(name if value.lower() in _TRUE else "--no-" + name[2:])
                i += 1 if eq else 2
                continue
        if tp is not None and _is_tuple(tp):
            values = [inline] if eq else []
            j = i + 1
            while not eq and j < len(argv) and not argv[j].startswith("--"):
                values.append(argv[j])
                j += 1
            parts = [p.strip() for v in values for p in v.split(",") if p.strip()]
            out += [name, *parts]
            i = j
            continue
        out.append(token)
        i += 1
    return out


def _flatten_error(text: str, prog: str) -> str:
    lines = []
    for line in _ANSI.sub("", text).splitlines():
        line = line.strip().strip(_BOX).strip()
        if not line or set(line) <= set(_BOX + "-=") or line.startswith(("For full helptext", "usage:", prog)):
            continue
        lines.append(" ".join(line.split()))
    deduped = lines[1:] if len(lines) > 1 else lines          # the first line is the box's title
    message = " ".join(deduped).replace(" Perhaps you meant:", "; did you mean:")
    return f"{message}; see {prog} --help" if message else f"invalid arguments; see {prog} --help"


def read_config_file(path: str, what: str = "--config") -> dict:
    """A mapping from a YAML or JSON file; every problem names the file."""
    import json

    import yaml
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder; give a YAML or JSON file (a run's config.json)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not a text file ({exc})") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.endswith(".json") else "YAML/JSON"
        raise ConfigError(f"{what} {path} is not valid {kind} ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} holds a {type(data).__name__}, not a mapping of options")
    return data


def pop_option(argv: list[str], flag: str) -> tuple[list[str], str | None]:
    """Remove ``flag VALUE`` (or ``flag=VALUE``) from argv; returns (rest, value or None)."""
    rest, value, i = [], None, 0
    spellings = {flag, flag.replace("-", "_")}
    while i < len(argv):
        name, eq, inline = argv[i].partition("=")
        if name in spellings:
            if eq:
                value = inline
            elif i + 1 < len(argv):
                value, i = argv[i + 1], i + 1
            else:
                raise UsageError(f"{flag} needs a value")
        else:
            rest.append(argv[i])
        i += 1
    return rest, value


def merge(default: Any, data: dict, source: str) -> Any:
    """``default`` (a dataclass instance) with the values of ``data`` (nested mappings) replacing its fields."""
    def deep(base: dict, new: dict) -> dict:
        merged = dict(base)
        for k, v in new.items():
            merged[k] = deep(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return merged
    try:
        return from_dict(type(default), deep(to_dict(default), data))
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def parse(cls: type, argv: list[str], *, prog: str, default: Any = None, description: str | None = None) -> Any:
    """An instance of dataclass ``cls`` from ``argv`` (tyro), starting from ``default``; UsageError on bad input."""
    import tyro
    argv = legacy_spellings(list(argv), flag_types(cls))
    err = io.StringIO()
    kwargs = {"default": default} if default is not None else {}
    try:
        with contextlib.redirect_stderr(err):
            return tyro.cli(cls, args=argv, prog=prog, description=description, **kwargs)
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        raise UsageError(_flatten_error(err.getvalue(), prog)) from None


def field_help(cls: type) -> dict[str, str]:
    """The comment written next to (or just above) each field of a dataclass, as tyro shows it."""
    import inspect
    import tokenize
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out, pending, current = {}, [], None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if current is not None and tok.start[0] == current[1]:
                out[current[0]] = text
            else:
                pending.append(text)
        elif tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in names:
            current = (tok.string, tok.start[0])
            if pending:
                out[tok.string] = " ".join(pending)
            pending = []
        elif tok.type == tokenize.NL and current is None:
            continue
    return out
