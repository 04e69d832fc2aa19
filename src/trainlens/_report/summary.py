"""The one-line summary a watch block prints on exit, as a rich renderable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

from .._drill import ended_text


class RunSummary:
    """`trainlens: run ID STATUS, N steps; drill: PATH`, then one line per finding."""

    def __init__(self, drill: dict[str, Any], findings: Sequence[Any], run_dir: Path):
        self.drill, self.findings, self.run_dir = drill, findings, run_dir

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        drill = self.drill
        status = str(drill.get("status"))
        color = {"healthy": "green", "warning": "yellow"}.get(status, "red")
        line = Text.assemble(
            ("trainlens", "bold"),
            f": run {drill.get('run_id')} ",
            (status, color),
            f", {drill.get('steps', 0)} steps",
        )
        ended = drill.get("ended")
        if isinstance(ended, dict) and ended.get("how") not in (None, "completed", "raised"):
            line.append(f" ({ended_text(ended)})")
        line.append(f"; drill: {_relative(self.run_dir / 'drill.md')}")
        yield line
        for f in self.findings:
            yield Text(f"  - {f.summary()}")


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
