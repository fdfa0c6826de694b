"""The ``repa`` command line: every command's options are one typed dataclass (``repa.commands``), parsed by
tyro through ``repa.typed_cli``; the command then calls one library function. Heavy imports happen inside the
commands, so ``repa --help`` is instant.

Adding a command: a dataclass in ``repa.commands``, a ``_run_<name>(opts)`` function below, one COMMANDS entry.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import shlex
import sys
from dataclasses import dataclass
from typing import Any, Callable


# ---- commands ------------------------------------------------------------------------------------------------------

def _run_train(opts) -> int:
    from repa.train_cli import run_train
    return run_train(opts)


def _train_default(argv: list[str]):
    """The starting TrainCommand: the preset (or --config file) and --fast applied, so flags override them and
    ``--help`` shows the values they give."""
    from repa import commands
    from repa.train_cli import base_config
    from repa.typed_cli import pop_option
    _, preset = pop_option(argv, "--preset")
    _, config = pop_option(argv, "--config")
    fast = any(a in ("--fast", "--fast=true", "--fast=True") for a in argv)
    base = base_config(preset or commands.TrainCommand.preset, config, fast)
    return commands.TrainCommand(train=base)


def _run_presets(opts) -> int:
    from repa.presets import PRESETS
    print(f"{'preset':24s} {'model':10s} {'enc. depth':>10s} {'lambda':>6s} {'res':>4s} {'batch':>5s}  encoders")
    for name, make in PRESETS.items():
        c = make()
        print(f"{name:24s} {c.model.name:10s} {c.model.encoder_depth:10d} {c.objective.proj_coeff:6.2f} "
              f"{c.data.resolution:4d} {c.global_batch_size:5d}  {','.join(c.encoders)}")
    return 0


def _demo_command_class():
    """``repa demo``'s options: every field of ``repa.demo.DemoConfig`` (its comments are the help), with
    ``seeds`` given as a count and a first seed."""
    from typing import Annotated, Optional

    from tyro.conf import arg

    from repa.demo.config import DemoConfig
    from repa.typed_cli import field_help
    helps = field_help(DemoConfig)
    fields: list = []
    for f in dataclasses.fields(DemoConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name == "seeds":
            seeds = tuple(default)
            fields += [("seeds", Annotated[int, arg(help="number of seed pairs (3 or more give a median and range)")],
                        dataclasses.field(default=len(seeds))),
                       ("first_seed", Annotated[int, arg(help=helps.get("seeds", "first seed"))],
                        dataclasses.field(default=seeds[0] if seeds else 1))]
            continue
        tp = DemoConfig.__annotations__[f.name]
        if isinstance(tp, str):
            import typing
            tp = typing.get_type_hints(DemoConfig)[f.name]
        fields.append((f.name, Annotated[tp, arg(help=helps.get(f.name) or f.name.replace("_", " "))],
                       dataclasses.field(default=default)))
    fields.append(("config", Annotated[Optional[str], arg(help="YAML or JSON file with values for any option; "
                                                              "flags given too override it")],
                   dataclasses.field(default=None)))
    cls = dataclasses.make_dataclass("DemoCommand", fields, frozen=True)
    cls.__doc__ = ("The default job: REPA vs vanilla latent SiT on Fashion-MNIST, speed-up with error bars, "
                   "report.")
    return cls


def _run_demo(opts) -> int:
    from repa.config import ConfigError
    from repa.demo import DemoConfig, run_demo
    if opts.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {opts.seeds}")
    values = {f.name: getattr(opts, f.name) for f in dataclasses.fields(DemoConfig) if f.name != "seeds"}
    values["seeds"] = tuple(range(opts.first_seed, opts.first_seed + opts.seeds))
    run_demo(DemoConfig(**values))
    return 0


def _load(opts):
    from repa.checkpoint import load_model
    return load_model(opts.checkpoint, which=opts.which, device=opts.device or _default_device(),
                      origin=opts.origin, encoder_depth=opts.encoder_depth)


def _default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _run_sample_grid(opts) -> int:
    from repa.preflight import check_output_file
    from repa.runlock import clean_stale_temp_files
    from repa.evaluation.generate import sample_grid_png
    for flag, value in (("--num", opts.num), ("--steps", opts.sampling.steps)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    check_output_file(opts.out, "--out")
    clean_stale_temp_files(os.path.dirname(os.path.abspath(opts.out)), prefix=f".{os.path.basename(opts.out)}.tmp")
    model = _load(opts)
    sample_grid_png(model, opts.out, opts.sampling, num=opts.num, seed=opts.seed, vae=opts.vae)
    print(f"wrote {opts.out}")
    return 0


def _run_analyze(opts) -> int:
    from repa.analysis.run import AnalyzeOptions, run_analysis
    if not opts.checkpoints:
        raise ValueError("give at least one checkpoint (CKPT [CKPT ...])")
    settings = AnalyzeOptions(num_samples=opts.num_samples, t=opts.t, layers=tuple(opts.layers) or None,
                              topk=opts.topk, batch_size=opts.batch_size, seed=opts.seed, probe=not opts.no_probe,
                              probe_epochs=opts.probe_epochs)
    run_analysis(list(opts.checkpoints), opts.data, opts.out, settings, encoder=opts.encoder,
                 encoder_weights=opts.encoder_weights, which=opts.which, device=opts.device)
    return 0


def _run_prepare(opts) -> int:
    from repa.data.prepare_cli import run_prepare
    return run_prepare(opts)


def _run_encoders(opts) -> int:
    from repa.encoders import describe
    if (opts.resolution is None) != (opts.token_grid is None):
        raise ValueError("--resolution and --token-grid go together")
    print(describe(opts.names, resolution=opts.resolution, token_grid=opts.token_grid))
    return 0


def _run_sample(opts) -> int:
    from repa.evaluation.generate import sample_to_npz
    if opts.encoder_depth is not None:
        raise ValueError("--encoder-depth does not change samples (the projectors are not used); leave it out")
    sample_to_npz(opts.checkpoint, opts.out, opts.sampling, num=opts.num_samples, seed=opts.seed,
                  labels=opts.labels, batch_size=opts.batch_size, vae=opts.vae, which=opts.which,
                  device=opts.device, origin=opts.origin)
    return 0


def _run_eval(opts) -> int:
    import json
    from repa.evaluation.evaluate import evaluate_samples
    metrics = evaluate_samples(opts.samples, opts.ref, out=opts.out, inception_path=opts.inception,
                               logits=opts.logits, dinov2=opts.dinov2, dinov2_model=opts.dinov2_model,
                               ref_num=opts.ref_num, batch_size=opts.batch_size, use_cache=not opts.no_cache,
                               cache_dir=opts.cache_dir, device=opts.device)
    print(json.dumps(metrics, indent=2))
    if "inception_score" not in metrics:
        print("note: no Inception Score: it needs the Inception softmax-layer weights (--logits FILE; see "
              "docs/EVAL.md)", file=sys.stderr)
    return 0


def _eval_legacy(argv: list[str]) -> list[str]:
    """``--dinov2`` alone (earlier versions) means the default weights."""
    out = []
    for i, token in enumerate(argv):
        out.append(token)
        if token == "--dinov2" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("default")
    return out


def _run_export(opts) -> int:
    from repa.checkpoint import export_model
    folder = export_model(opts.checkpoint, opts.out, which=opts.which, origin=opts.origin,
                          encoder_depth=opts.encoder_depth)
    print(f"wrote {folder}/model.safetensors and {folder}/config.json; load with repa.load_model({str(folder)!r})")
    return 0


@dataclass(frozen=True)
class Command:
    """One ``repa`` command: its help line, its options class (or a function building it), what it runs."""
    help: str
    options: Callable[[], type]
    run: Callable[[Any], int]
    default: Callable[[list[str]], Any] | None = None       # the starting options, from argv (train's preset)
    legacy: Callable[[list[str]], list[str]] | None = None  # earlier spellings rewritten before parsing


def _options(name: str) -> Callable[[], type]:
    def get():
        from repa import commands
        return getattr(commands, name)
    return get


COMMANDS: dict[str, Command] = {
    "prepare": Command("prepare a dataset folder (images, VAE latents, token caches); reruns resume",
                       _options("PrepareCommand"), _run_prepare),
    "train": Command("train a SiT/DiT with (or without) REPA; reruns resume", _options("TrainCommand"), _run_train,
                     default=_train_default),
    "presets": Command("list the training presets (the paper's runs and small offline ones)",
                       _options("PresetsCommand"), _run_presets),
    "demo": Command("the default job: REPA vs vanilla latent SiT on Fashion-MNIST, speed-up with error bars, report",
                    _demo_command_class, _run_demo),
    "sample": Command("N samples of a model to an ADM .npz (+ grid, settings); torchrun shards it, reruns resume",
                      _options("SampleCommand"), _run_sample),
    "eval": Command("FID, sFID, IS, precision, recall of a sample .npz (ADM evaluator definitions)",
                    _options("EvalCommand"), _run_eval, legacy=_eval_legacy),
    "sample-grid": Command("write a PNG grid of samples from a model (quick look)", _options("SampleGridCommand"),
                           _run_sample_grid),
    "analyze": Command("CKNNA alignment with a frozen encoder and linear probes, per block; analysis.json, plots, "
                       "a summary table", _options("AnalyzeCommand"), _run_analyze),
    "encoders": Command("list the frozen encoders: width, input resolution, weights source",
                        _options("EncodersCommand"), _run_encoders),
    "export": Command("export a checkpoint as model.safetensors + config.json (repa.load_model, torch.hub, the Hub)",
                      _options("ExportCommand"), _run_export),
}


def parse_command(command: str, argv: list[str]):
    """The typed options of ``repa COMMAND argv`` (UsageError / ConfigError on bad input)."""
    from repa.typed_cli import parse, pop_option, read_config_file
    spec = COMMANDS[command]
    cls = spec.options()
    if spec.legacy is not None:
        argv = spec.legacy(argv)
    prog = f"repa {command}"
    if spec.default is not None:
        if any(a in ("-h", "--help") for a in argv):
            try:
                default = spec.default(argv)
            except Exception:  # noqa: BLE001  help shows the plain defaults when the preset/file is broken
                default = None
        else:
            default = spec.default(argv)
        opts = parse(cls, argv, prog=prog, default=default)
        given = tuple(a[2:].partition("=")[0].replace("-", "_") for a in argv if a.startswith("--"))
        return dataclasses.replace(opts, given=given) if hasattr(opts, "given") else opts
    rest, config = pop_option(argv, "--config")
    if config is None or not any(f.name == "config" for f in dataclasses.fields(cls)):
        return parse(cls, argv, prog=prog)
    data = read_config_file(config)
    default = _defaults_with(cls, data, config)
    return dataclasses.replace(parse(cls, rest, prog=prog, default=default), config=config)


def _defaults_with(cls, data: dict, source: str):
    """An instance of ``cls`` holding its defaults and the file's values; fields the file leaves out that have no
    default must be in the file."""
    from repa.config import ConfigError, to_dict
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"--config {source}: unknown option(s) {unknown}; known: "
                          f"{sorted(f.name for f in dataclasses.fields(cls))}")
    missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and f.name not in data]
    if missing:
        raise ConfigError(f"--config {source}: give {', '.join(missing)} in the file when using --config "
                          f"(or leave --config out)")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            continue
        values[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    plain = {k: (to_dict(v) if dataclasses.is_dataclass(v) else v) for k, v in values.items()}
    return merge_instance(cls, {**plain, **data}, source)


def merge_instance(cls, data: dict, source: str):
    from repa.config import ConfigError, from_dict
    try:
        return from_dict(cls, data)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"--config {source}: {exc}") from None


def _top_level_help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: repa [--debug] [--version] COMMAND [options]", "",
             "REPA: representation alignment for generation (Yu et al., ICLR 2025).", "", "commands:"]
    lines += [f"  {name:{width}s}  {spec.help}" for name, spec in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help  this message; `repa COMMAND --help` lists a command's options",
              "  --version   print the version and exit",
              f"  --debug     show the full traceback of an error (or set {DEBUG_ENV}=1)"]
    return "\n".join(lines)


# ---- errors: one line each -----------------------------------------------------------------------------------------

DEBUG_ENV = "REPA_DEBUG"
RESUMABLE = {"train", "prepare", "sample"}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _os_error_message(exc: OSError) -> str:
    """A readable reason for an OSError raised by this project (message in strerror) or by the system."""
    import errno
    reason = exc.strerror or str(exc)
    if exc.filename and str(exc.filename) not in reason:
        reason = f"{exc.filename}: {reason}"
    hints = {errno.ENOSPC: "free space on that file system or choose another folder",
             errno.EDQUOT: "free space on that file system or choose another folder",
             errno.EFBIG: "the file exceeds a size limit of this system or file system",
             errno.EROFS: "the file system is read-only; choose a writable folder",
             errno.EACCES: "choose a folder you may write to", errno.EPERM: "choose a folder you may write to"}
    hint = hints.get(exc.errno)
    return f"{reason}; {hint}" if hint and hint not in reason else reason


def describe_error(exc: BaseException, command: str, argv: list[str]) -> tuple[int, str] | None:
    """(exit code, one-line message) for a user error or an interruption; None for a bug (keep the traceback)."""
    import pickle

    from repa.config import ConfigError
    from repa.interrupt import Interrupted
    from repa.runlock import RunLockedError
    from repa.training_utils import NonFiniteError
    if isinstance(exc, Interrupted):
        if command == "train" and exc.checkpoint is not None:
            how = f"; resume with: repa {shlex.join(argv)}"
        elif command in RESUMABLE:
            how = "; rerun the same command to resume"
        else:
            how = ""
        return exc.exit_code, f"{exc}{how}"
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted (Ctrl-C)" + ("; rerun the same command to resume" if command in RESUMABLE else "")
    if isinstance(exc, (NonFiniteError, RunLockedError)):
        return 1, str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        return 2, f"a file is not a weights-only torch file; nothing in it was executed ({_one_line(exc)[:200]})"
    if isinstance(exc, (ConfigError, ValueError)):
        return 2, str(exc)
    if isinstance(exc, (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)):
        return 2, _os_error_message(exc)        # a path given wrongly
    if isinstance(exc, OSError):
        return 1, _os_error_message(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    while argv and argv[0].startswith("-"):
        flag = argv.pop(0)
        if flag in ("-h", "--help"):
            print(_top_level_help())
            return 0
        if flag == "--version":
            from repa import __version__
            print(f"repa {__version__}")
            return 0
        if flag == "--debug":
            debug = True
            continue
        print(f"repa: error: unknown option {flag!r}; see repa --help", file=sys.stderr)
        return 2
    if not argv:
        print(_top_level_help(), file=sys.stderr)
        print("repa: error: give a COMMAND", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; commands: {', '.join(COMMANDS)}"
        print(f"repa: error: unknown command {command!r}{hint}", file=sys.stderr)
        return 2
    if "--debug" in rest:
        debug, rest = True, [a for a in rest if a != "--debug"]
    from repa.interrupt import signals_as_exceptions
    try:
        with signals_as_exceptions():
            opts = parse_command(command, rest)
            if getattr(opts, "device", None) is not None:
                from repa.preflight import check_device
                check_device(opts.device)
            result = COMMANDS[command].run(opts)
    except BaseException as exc:  # noqa: BLE001  user errors: one clear line, no traceback
        if isinstance(exc, SystemExit):
            raise
        described = describe_error(exc, command, [a for a in argv if a != "--debug"])
        if described is None or debug:
            raise
        code, message = described
        from repa.interrupt import Interrupted
        label = "" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "error: "
        print(f"repa {command}: {label}{_one_line(message)}", file=sys.stderr)
        return code
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
