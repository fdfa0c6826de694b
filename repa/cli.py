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


# ---- end of subcommands (new ones: add a _add_<name> function above and list it in SUBCOMMANDS) -------------------

SUBCOMMANDS = [
    _add_train,
    _add_sample_grid,
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
