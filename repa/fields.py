"""The generic boundary check of typed config dataclasses (``check_fields``) and the project's error type for an
invalid value (``ConfigError``, re-exported by ``repa.config``): every field is checked by its type hint, so a field
added later is covered without a new line."""
from __future__ import annotations

import contextvars
import dataclasses
import math
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the allowed values."""


class UsageError(ConfigError):
    """A command line does not parse (unknown flag, bad value, missing argument)."""


_FOUND: contextvars.ContextVar[list | None] = contextvars.ContextVar("repa_config_errors", default=None)


def _require(ok: bool, field_name: str, message: str) -> None:
    """ConfigError ``field: message`` unless ``ok``; inside ``collect`` the problem is noted and checking goes on."""
    if not ok:
        _report(f"{field_name}: {message}")


def _report(problem: str) -> None:
    found = _FOUND.get()
    if found is None:
        raise ConfigError(problem)
    found.append(problem)


def collect(*checks) -> None:
    """Run every check (a callable of no argument) and raise one ConfigError naming every field in error, each with
    its first problem, ``; ``-joined, so a config with several bad fields is fixed in one go. A check stops at its
    first raised ConfigError, or where it breaks (TypeError ...) on a value already reported. Nested inside another
    ``collect``, the problems go to the outer one, which raises."""
    outer = _FOUND.get()
    found: list[str] = [] if outer is None else outer
    token = _FOUND.set(found)
    try:
        for check in checks:
            try:
                check()
            except ConfigError as exc:
                found.append(str(exc))
            except (TypeError, ValueError, AttributeError, ZeroDivisionError, KeyError, IndexError):
                if not found:                 # no reported value explains it: a bug, keep the traceback
                    raise
    finally:
        _FOUND.reset(token)
    if found and outer is None:
        first: dict[str, str] = {}
        for problem in found:
            first.setdefault(problem.split(": ", 1)[0], problem)
        raise ConfigError("; ".join(first.values()))


INT_LIMIT = 2 ** 63 - 1                # every integer field fits a signed 64-bit integer (seeds, steps, sizes)


def check_fields(cfg: Any, prefix: str = "") -> None:
    """The generic boundary check of a config dataclass, field by field from its type hints: the right type (a
    bool is not an int, an int not a str), every float finite and >= 0, every int in 0..2**63-1, every Literal one
    of its choices, nested sections recursively. Fields added later are covered by their type; the specific
    ranges are checked after this (``validate_model`` ...)."""
    for name, tp in typing.get_type_hints(type(cfg)).items():
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(tp) and isinstance(value, tp):
            check_fields(value, prefix + name + ".")
            continue
        token, problem = _FOUND.set(None), None     # a field stops at its first problem (inside ``collect``, the
        try:                                        # next field is checked all the same)
            _check_value(value, tp, prefix + name)
        except ConfigError as exc:
            problem = str(exc)
        finally:
            _FOUND.reset(token)
        if problem is not None:
            _report(problem)


def _check_value(value: Any, tp: Any, name: str) -> None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        _require(isinstance(value, tp), name, f"expected a {tp.__name__}, got {value!r}")
        return check_fields(value, name + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        arms = [a for a in args if a is not type(None)]
        errors = []
        for arm in arms:
            try:
                return _check_value(value, arm, name)
            except ConfigError as exc:
                errors.append(str(exc).split(": ", 1)[-1])
        raise ConfigError(f"{name}: " + " or ".join(errors))
    if origin is typing.Literal:
        _require(value in args and type(value) in {type(a) for a in args}, name,
                 f"must be one of {', '.join(map(repr, args))}, got {value!r}")
    elif origin is tuple:
        _require(isinstance(value, tuple), name, f"expected a tuple, got {value!r}")
        for item in value:
            _check_value(item, args[0], name)
    elif tp is bool:
        _require(isinstance(value, bool), name, f"must be true or false, got {value!r}")
    elif tp is int:
        _require(isinstance(value, int) and not isinstance(value, bool), name, f"must be an integer, got {value!r}")
        _require(value >= 0, name, f"must be >= 0, got {value}")
        _require(value <= INT_LIMIT, name, f"must fit in 64 bits (at most 2**63 - 1), got {value}")
    elif tp is float:
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), name,
                 f"must be a number, got {value!r}")
        _require(math.isfinite(value) and value >= 0, name, f"must be a finite number >= 0, got {value}")
    elif tp is str:
        _require(isinstance(value, str), name, f"must be a string, got {value!r}")
