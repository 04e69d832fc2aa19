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

    report = sub.add_parser(
        "report",
        help="show a run's drill in the terminal",
        description="Render the drill of a finished run: findings with the six drill fields "
        "and ranked causes, the loss curve, the shape trace and the per-layer table.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by watch")
    report.add_argument("--json", action="store_true", help="print drill.json only")
    report.set_defaults(func=_cmd_report)

    compare = sub.add_parser(
        "compare",
        help="fill result_after_fix of a failed run from its fixed rerun",
        description="Compare a failed run with its rerun after the fix: is each symptom "
        "gone, how did the loss move, which evidence changed. Writes result_after_fix into "
        "the failed run's drill.json and drill.md.",
    )
    compare.add_argument("failed_run_dir", metavar="FAILED_RUN_DIR")
    compare.add_argument("fixed_run_dir", metavar="FIXED_RUN_DIR")
    compare.set_defaults(func=_cmd_compare)
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


def _console():
    """stdout console: colour on a terminal, plain text (no ANSI codes) on a pipe."""
    import os

    from rich.console import Console

    terminal = sys.stdout.isatty() or bool(os.environ.get("FORCE_COLOR"))
    return Console(highlight=False, force_terminal=terminal)


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.json:
        from ._drill import read_drill

        read_drill(Path(args.run_dir))  # the same clear error as without --json
        sys.stdout.write((Path(args.run_dir) / "drill.json").read_text(encoding="utf-8"))
        return 0
    from ._report.terminal import load_report

    _console().print(load_report(args.run_dir))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ._report.compare import compare_runs

    comparison = compare_runs(args.failed_run_dir, args.fixed_run_dir)
    _console().print(comparison)
    return 0
