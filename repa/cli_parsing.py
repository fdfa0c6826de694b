"""The parsing helpers of ``repa.cli``: the ``--flags`` tyro makes for an options class, the rewriting of
``--flag true|false`` and ``--list a,b`` into tyro's spellings, tyro with its parse errors as one-line UsageErrors,
and help text without a second "(default: None)" after a help line that states the default itself.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import typing

_BOOLEAN = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def flags(cls: type, prefix: str = "") -> dict[str, type]:
    """Every ``--flag`` tyro makes for dataclass ``cls`` (positionals excepted), mapped to its type."""
    from tyro.conf import Positional
    out, hints, types = {}, typing.get_type_hints(cls, include_extras=True), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = getattr(hints[f.name], "__metadata__", ())
        name = next((m.name for m in meta if getattr(m, "name", None) is not None), f.name)
        if dataclasses.is_dataclass(types[f.name]):
            out.update(flags(types[f.name], f"{prefix}{name}." if name else prefix))
        elif Positional not in meta:
            out[f"--{prefix}{name}".replace("_", "-")] = types[f.name]
    return out


def rewrite(argv: list[str], known: dict[str, type]) -> list[str]:
    """``--flag true|false`` / ``--flag=false`` as tyro's ``--flag`` / ``--no-flag`` (``--no-flag false``:
    ``--flag``); ``--list a,b`` as ``a b``."""
    out, i = [], 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        value, key, taken = value if eq else (argv[i + 1] if i + 1 < len(argv) else ""), name.replace("_", "-"), 1
        section, dot, field = key[2:].rpartition(".")
        negated = field.startswith("no-") and known.get(f"--{section}{dot}{field[3:]}") is bool
        tp = bool if negated else known.get(key)
        if tp is bool and value.lower() in _BOOLEAN:
            positive = _BOOLEAN[value.lower()] != negated
            field = field[3:] if negated else field
            out.append(f"--{section}{dot}{field}" if positive else f"--{section}{dot}no-{field}")
            taken += not eq
        elif "," in value and tuple in [typing.get_origin(t) for t in (tp, *typing.get_args(tp))]:
            out += [name, *[v for v in value.split(",") if v]]
            taken += not eq
        else:
            out.append(argv[i])
        i += taken
    return out


def run_tyro(cls: type, argv: list[str], prog: str, **kwargs):
    """``tyro.cli`` with parse errors raised as UsageError (tyro's parse-error hook) and the help's defaults once."""
    import tyro
    from tyro import _errors      # tyro's hook for parse errors (tyro>=1,<2; documented there as experimental)
    with _errors.on_parse_error(lambda event: usage_error(event, cls)), _defaults_said_once():
        return tyro.cli(cls, args=argv, prog=prog, **kwargs)


@contextlib.contextmanager
def _defaults_said_once():
    """A help line that says what its unset (None) value means ("default: the CPUs of this rank") keeps that, without
    tyro's "(default: None)" after it. tyro (1.x) builds each option's help in ``_arguments.generate_argument_helptext``
    and has no per-parser switch for this hint; the original is restored on exit."""
    from tyro import _arguments
    original = _arguments.generate_argument_helptext

    def helptext(arg, lowered, *args, **kwargs):
        text = arg.field.helptext() if callable(arg.field.helptext) else arg.field.helptext   # tyro: lazy help
        said = arg.field.default is None and "default" in (text or "")
        if said:
            argconf = dataclasses.replace(arg.field.argconf, help_behavior_hint="")
            arg = dataclasses.replace(arg, field=dataclasses.replace(arg.field, argconf=argconf))
        return original(arg, lowered, *args, **kwargs)

    _arguments.generate_argument_helptext = helptext
    try:
        yield
    finally:
        _arguments.generate_argument_helptext = original


def usage_error(event, cls: type):
    """A tyro parse-error event as one UsageError line naming the option (unknown flags, not their values)."""
    from tyro import _errors as e

    from repa.fields import UsageError
    arg = getattr(event, "argument", None)
    name = f"{arg.display_name()}: " if arg is not None else ""
    if isinstance(event, e.UnrecognizedArgs):
        unknown = [t for t in event.tokens if t.startswith("-")] or list(event.tokens)
        close = [c for t in unknown for c in difflib.get_close_matches(t.partition("=")[0].replace("_", "-"),
                                                                          flags(cls), n=1)]
        message = (f"unrecognized option{'s' * (len(unknown) > 1)} {' '.join(unknown)}"
                   + (f"; did you mean: {', '.join(close)}?" if close else ""))
    elif isinstance(event, e.MissingArgs):
        message = "missing " + ", ".join(a.arg.display_name() for a in event.missing_arguments)
    elif isinstance(event, e.InvalidChoice):
        message = f"{name}invalid choice {event.value!r} (choose from {', '.join(event.choices)})"
    else:
        message = name + getattr(event, "message", "give one value" if arg is not None else
                                 f"invalid arguments ({type(event).__name__})")
    raise UsageError(f"{message}; see {event.prog} --help")
