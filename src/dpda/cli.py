"""The ``dpda`` command line. It only parses arguments and calls the library."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from dpda import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpda",
        description=(
            "Train and evaluate speech deepfake detectors with dual-path data-augmented "
            "training and gradient alignment (Truong et al., ICASSP 2026)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"dpda {__version__}")
    parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0
