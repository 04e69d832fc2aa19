"""The `trainlens` command line. Errors a user can cause exit 2 with one clear line."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from ._errors import TrainlensError


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="trainlens",
        description="Training-diagnostics debugger for PyTorch: failure drills for your runs.",
    )
    parser.add_argument("--version", action="version", version=f"trainlens {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks of usage errors (for bug reports)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="run the bundled examples and write their drills",
        description="Run the bundled examples (a healthy run and planted failures) on built-in "
        "data and write their drills. No download.",
    )
    demo.add_argument(
        "--out",
        default="trainlens-runs/demo",
        help="folder for the run dirs (default: %(default)s)",
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TrainlensError as err:
        if args.debug:
            traceback.print_exc()
        print(f"trainlens: error: {err}", file=sys.stderr)
        return 2


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(args.out)
