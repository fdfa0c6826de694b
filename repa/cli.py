"""The ``repa`` command line: every command is a typed dataclass (``repa.commands``) parsed by tyro, whose ``run``
calls one library function; ``repa --help`` imports no command. Parsing has two tyro stages: ``Sources`` reads
``--preset``, ``--config FILE``, ``--fast``; then the command's class is read from that start (preset, file, fast path:
``repa.config_sources.compose``), so flags override all three and ``--help`` shows the result. ``--flag true|false``
and a list's ``a,b`` are rewritten to tyro's ``--flag``/``--no-flag`` and ``a b`` first. A rejected command line is
a UsageError (tyro's parse-error hook; these helpers: ``repa.cli_parsing``): like every ConfigError, one line, exit
2; any other exception is a bug and keeps its traceback. Adding a command: a class with ``run`` in
``repa.commands``, a line here.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import shlex
import sys
import warnings
from dataclasses import dataclass
from typing import Optional


COMMANDS: dict[str, str] = {       # the lines of `repa --help`; each command's options and run: repa.commands
    "prepare": "prepare a dataset folder (images, VAE latents, token caches); reruns resume",
    "train": "train a SiT/DiT with (or without) REPA; reruns resume",
    "presets": "list the training presets (the paper's runs and small offline ones)",
    "demo": "the default job: REPA vs vanilla latent SiT on Fashion-MNIST, speed-up with error bars, report",
    "sample": "N samples of a model to an ADM .npz (+ grid, settings); torchrun shards it, reruns resume",
    "eval": "FID, sFID, IS, precision, recall of a sample .npz (ADM evaluator definitions)",
    "sample-grid": "write a PNG grid of samples from a model (quick look)",
    "analyze": "CKNNA alignment with a frozen encoder and linear probes, per block; analysis.json, plots, a summary table",
    "encoders": "list the frozen encoders: width, input resolution, weights source",
    "export": "export a checkpoint as model.safetensors + config.json (repa.load_model, torch.hub, the Hub)",
}


def options_class(command: str) -> type:
    """The options class of ``command`` (``sample-grid``: ``repa.commands.SampleGridCommand``), imported now."""
    return getattr(importlib.import_module("repa.commands"), command.title().replace("-", "") + "Command")


# ---- parsing -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Widths:
    encoder_dims: Optional[tuple[int, ...]] = None


@dataclass(frozen=True)
class Sources:
    """Stage one of parsing: the options that choose where the others start (see the module docstring)."""
    preset: Optional[str] = None
    config: Optional[str] = None
    fast: bool = False
    model: _Widths = _Widths()


def parse_command(command: str, argv: list[str]):
    """The typed options of ``repa COMMAND argv`` (UsageError / ConfigError on bad input)."""
    from repa.cli_parsing import flags, rewrite, run_tyro
    from repa.config_sources import typed
    cls, prog = options_class(command), f"repa {command}"
    argv = rewrite(list(argv), flags(cls))
    sources, _ = run_tyro(Sources, argv, prog, return_unknown_args=True, add_help=False)
    start = _start(cls, sources)
    opts = run_tyro(cls, argv, prog, default=start)
    if sources.config is not None and hasattr(opts, "config"):   # tyro typed the flags; now the file's values
        opts = typed(opts, sources.config)
    if hasattr(opts, "train") and sources.model.encoder_dims is None and opts.train.encoders != start.train.encoders:
        from repa.encoders import with_encoder_dims           # new encoders, widths not given: follow the encoders
        opts = dataclasses.replace(opts, train=with_encoder_dims(opts.train))
    return opts


def _start(cls: type, sources: Sources):
    """The options the flags start from (``repa.config_sources.compose``): the defaults (train: the preset), the
    --config file's values, --fast."""
    import tyro

    from repa.commands import FAST_PATH
    from repa.config_sources import compose
    if any(f.name == "train" for f in dataclasses.fields(cls)):
        from repa.presets import get_preset
        return cls(train=compose(get_preset(sources.preset or cls.preset), sources.config,
                                 FAST_PATH if sources.fast else None))
    # a required option the file does not give stays required on the command line
    start = cls(**{f.name: tyro.MISSING for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING})
    return compose(start, sources.config if hasattr(cls, "config") else None)


def _top_level_help() -> str:
    width = max(len(name) for name in COMMANDS)
    commands = "\n".join(f"  {name:{width}s}  {text}" for name, text in COMMANDS.items())
    return (f"usage: repa [--debug] [--version] COMMAND [options]\n\nREPA: representation alignment for generation "
            f"(Yu et al., ICLR 2025).\n\ncommands:\n{commands}\n\noptions:\n  -h, --help  this message; `repa COMMAND "
            f"--help` lists a command's options\n  --version   print the version and exit\n  --debug     show the "
            f"full traceback of an error (or set {DEBUG_ENV}=1)")


# ---- errors: user errors are one line; bugs keep their traceback ---------------------------------------------------

DEBUG_ENV = "REPA_DEBUG"
RESUMABLE = {"train", "prepare", "sample"}
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)  # a path given wrongly
def describe_error(exc: BaseException, command: str, argv: list[str]) -> tuple[int, str] | None:
    """(exit code, one-line message) for a user error or an interruption; None for a bug (keep the traceback)."""
    import pickle

    from repa.config import ConfigError
    from repa.interrupt import Interrupted
    from repa.preflight import describe_os_error
    from repa.runlock import RunLockedError
    from repa.training_utils import NonFiniteError
    rerun = "; rerun the same command to resume" if command in RESUMABLE else ""
    if isinstance(exc, Interrupted):
        resume = command == "train" and exc.checkpoint is not None
        return exc.exit_code, f"{exc}" + (f"; resume with: repa {shlex.join(argv)}" if resume else rerun)
    if isinstance(exc, KeyboardInterrupt):
        return 130, f"interrupted (Ctrl-C){rerun}"
    if isinstance(exc, pickle.UnpicklingError):
        return 2, f"a file is not a weights-only torch file; nothing in it was executed ({' '.join(str(exc).split())[:200]})"
    if isinstance(exc, (ConfigError, NonFiniteError, RunLockedError, OSError)):   # user (2) or environment (1) errors
        code = 2 if isinstance(exc, (ConfigError, *_PATH_ERRORS)) else 1
        return code, describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in argv    # before or after the COMMAND
    argv = [a for a in argv if a != "--debug"]
    command, rest = (argv or [""])[0], argv[1:]
    if command in ("-h", "--help", "--version"):
        from repa import __version__
        print(f"repa {__version__}" if command == "--version" else _top_level_help())
        return 0
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        message = ("give a COMMAND" if not command else f"unknown option {command!r}; see repa --help"
                   if command.startswith("-") else f"unknown command {command!r}; " +
                   (f"did you mean {close[0]!r}?" if close else f"commands: {', '.join(COMMANDS)}"))
        print(("" if command else _top_level_help() + "\n") + f"repa: error: {message}", file=sys.stderr)
        return 2
    from repa.interrupt import Interrupted, signals_as_exceptions
    plain = warnings.formatwarning                   # a warning is one line too: "repa COMMAND: warning: ..."
    warnings.formatwarning = lambda message, *_, **__: f"repa {command}: warning: {' '.join(str(message).split())}\n"
    try:
        with signals_as_exceptions():
            opts = parse_command(command, rest)
            if getattr(opts, "device", None) is not None:
                from repa.preflight import check_device
                check_device(opts.device)
            result = opts.run()
    except (Exception, KeyboardInterrupt) as exc:  # user errors and interruptions: one clear line
        described = describe_error(exc, command, [command, *rest])
        if described is None or debug:
            raise
        code, message = described
        label = "" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "error: "
        print(f"repa {command}: {label}{' '.join(str(message).split())}", file=sys.stderr)
        return code
    finally:
        warnings.formatwarning = plain
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
