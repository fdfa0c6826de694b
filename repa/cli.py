"""The ``repa`` command line: parse, resolve a config, call one function.

Each subcommand has one ``_add_<name>(subparsers)`` function below that declares its arguments and sets
``func``; heavy imports happen inside the command, so ``repa --help`` is instant.
"""
from __future__ import annotations

import argparse
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
        from repa.visualize import sample_grid_png
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


# ---- end of subcommands (new ones: add a _add_<name> function above and list it in SUBCOMMANDS) -------------------

SUBCOMMANDS = [
    _add_prepare,
    _add_train,
    _add_presets,
    _add_sample_grid,
    _add_analyze,
    _add_encoders,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repa", description="REPA: representation alignment for generation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from repa.config import ConfigError
    try:
        result = args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:  # user errors: one clear line, no traceback
        print(f"repa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
