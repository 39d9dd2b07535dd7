"""The ``dpda`` command line. It only parses arguments and calls the library."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from dpda import __version__
from dpda.align import SUMMARIES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpda",
        description=(
            "Train and evaluate speech deepfake detectors with dual-path data-augmented "
            "training and gradient alignment (Truong et al., ICASSP 2026)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"dpda {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    aligners = commands.add_parser("aligners", help="list the gradient aligners and their options")
    aligners.set_defaults(handler=_list_aligners)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.handler(args)


def _list_aligners(_: argparse.Namespace) -> int:
    for name, summary in SUMMARIES.items():
        print(f"{name:12s} {summary}")
    print("\nEvery aligner takes grouping='model' (one Gram matrix) or 'layer' (one per module).")
    return 0
