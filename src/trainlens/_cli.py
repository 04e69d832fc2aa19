"""The `trainlens` command line. Errors a user can cause exit 2 with one clear line."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from ._errors import TrainlensError


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

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
    diagnose = sub.add_parser(
        "diagnose",
        help="(re)build a run's drill from its records",
        description="Build the drill of RUN_DIR from its records: for a run whose process "
        "died before its block ended (killed, os._exit: the records streamed while it ran), "
        "or to run the current rules and installed plugins on an earlier run. Exit 0: "
        "drill written, no error finding; 1: written, status failed; 2: no records or the "
        "folder cannot be written.",
    )
    diagnose.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by watch")
    diagnose.add_argument("--json", action="store_true", help="print the new drill.json only")
    diagnose.set_defaults(func=_cmd_diagnose)

    overfit = sub.add_parser(
        "overfit-one-batch",
        help="check that a model can memorise one batch; explain why not",
        description="Train a model on one batch until it is memorised, under trainlens.watch. "
        "TARGET is path/to/file.py:factory or package.module:factory; the factory takes no "
        "arguments and returns trainlens.Setup(model=..., batch=(inputs, targets), "
        "loss_fn=..., optimizer=None) or a dict with those keys. Exit 0: memorised; "
        "1: not, and the drill says why; 2: usage or input error.",
    )
    overfit.add_argument(
        "target", metavar="TARGET", help="path/to/file.py:factory or module:factory"
    )
    overfit.add_argument(
        "--steps",
        default=None,
        help="most training steps (default: 200, doubled while the loss still falls "
        "clearly, up to 3000; stops early once memorised)",
    )
    overfit.add_argument(
        "--lr",
        default=None,
        help="learning rate (default Adam lr 1e-3 when the factory gives no optimizer)",
    )
    overfit.add_argument("--run-dir", default=None, help="run directory for the drill")
    overfit.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (verdict, losses, drill) on stdout",
    )
    overfit.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors"
    )
    overfit.set_defaults(func=_cmd_overfit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TrainlensError as err:
        if args.debug:
            traceback.print_exc()
        print(f"trainlens: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    """An error as one terminal-safe line: its text may quote a file from elsewhere."""
    from ._format import terminal_safe

    return terminal_safe(" ".join(str(err).split()), limit=2000)


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
        from ._run import load_drill

        # the validated drill, re-serialised: the same clear error as without --json, and
        # no raw control character reaches the terminal (JSON escapes them, same value)
        sys.stdout.write(_json_safe(load_drill(Path(args.run_dir))))
        return 0
    from ._report.terminal import load_report

    _console().print(load_report(args.run_dir))
    return 0


def _json_safe(drill: Any) -> str:
    """drill.json as trainlens writes it (indented, ASCII): every control character is a
    JSON escape, DEL too; a drill trainlens wrote prints byte for byte as its file."""
    import json

    return json.dumps(drill, indent=2).replace("\x7f", "\\u007f") + "\n"


def _cmd_compare(args: argparse.Namespace) -> int:
    from ._report.compare import compare_runs

    comparison = compare_runs(args.failed_run_dir, args.fixed_run_dir)
    _console().print(comparison)
    if comparison.write_error:
        where = comparison.failed.run_dir
        print(
            _one_line(
                f"trainlens: error: could not write result_after_fix into {where}: "
                f"{comparison.write_error}"
            ),
            file=sys.stderr,
        )
        return 2
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    import json

    from ._diagnose import diagnose_run
    from ._drill import ended_text
    from ._errors import RunDirError
    from ._format import terminal_safe

    written = diagnose_run(args.run_dir)
    if written.lost:
        raise RunDirError(
            f"could not write the drill into {args.run_dir}: {'; '.join(written.lost)}"
        )
    drill = written.drill
    if args.json:
        print(json.dumps(drill, indent=2, default=str))
    else:
        how = ended_text(drill.get("ended"))
        # what a run dir says reaches the terminal escaped (run dirs are untrusted input)
        print(
            terminal_safe(
                f"trainlens: run {drill['run_id']} {drill['status']}, {drill['steps']} steps"
                + (f"; {how}" if how else "")
                + f"; drill: {written.run_dir / 'drill.md'}"
            )
        )
        for f in written.findings:
            print(terminal_safe(f"  - {f.summary()}"))
    return 1 if drill["status"] == "failed" else 0


def _cmd_overfit(args: argparse.Namespace) -> int:
    import json

    from ._errors import UsageError
    from ._overfit import overfit_one_batch
    from ._target import call_factory, load_factory

    steps = None if args.steps is None else _parse_number(args.steps, "--steps", int)
    lr = None if args.lr is None else _parse_number(args.lr, "--lr", float)
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be a positive integer, got {args.steps!r}")
    if lr is not None and not 0 < lr < float("inf"):
        raise UsageError(f"--lr must be a positive number, got {args.lr!r}")
    factory, name = load_factory(args.target)
    setup = call_factory(factory, name)
    result = overfit_one_batch(
        setup.model,
        setup.batch,
        setup.loss_fn,
        setup.optimizer,
        steps=steps,
        lr=lr,
        run_dir=args.run_dir,
        quiet=False,
    )
    if args.json:
        from ._finding import _jsonable

        print(json.dumps(_jsonable(result.to_json())))
    else:
        _print_overfit(result)
    return 0 if result.passed else 1


def _parse_number(text: str, flag: str, kind: type) -> Any:
    from ._errors import UsageError

    try:
        value = kind(text)
    except ValueError:
        what = "a positive integer" if kind is int else "a positive number"
        raise UsageError(f"{flag} must be {what}, got {text!r}") from None
    return value


def _print_overfit(result: Any) -> None:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    head, *rest = result.verdict.splitlines()
    color = "green" if result.passed else "red"
    console.print(f"[bold {color}]{head}[/]")
    for line in rest:
        console.print(f"  {line}", markup=False)
    for f in result.findings:
        where = f" in `{f.module}`" if f.module else ""
        color = "red" if f.severity == "error" else "yellow"
        console.print(
            f"[{color}]{f.severity}[/]: [bold]{f.symptom}[/]{where}: likely "
            f"[bold]{f.likely_cause}[/]"
        )
        console.print(f"    evidence: {f.top.evidence}", markup=False)
        console.print(f"    first check: {' '.join(f.first_check.split())}", markup=False)
        console.print(f"    fix attempt: {' '.join(f.fix_attempt.split())}", markup=False)
    console.print(f"  drill: {result.run_dir / 'drill.md'}", markup=False)
