"""`trainlens.report(run_dir)`: a finished run's report as one object that shows itself
where it is displayed: rich text in a terminal, HTML (curves inline) in a notebook.

The same HTML is `drill.html`; `Lens`, `Finding` and `Run` display through it too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult


class Report:
    """A run's drill and pictures, to display: `trainlens.report("runs/exp1")`.

    In a notebook it renders as HTML with the curves and the attention diagram inline; in
    a terminal (`rich.print(report)` or `print(report)`) as `trainlens report` does.
    """

    def __init__(self, run_dir: str | os.PathLike[str]):
        from .._drill import read_drill

        self.run_dir = Path(run_dir)
        self.drill = read_drill(self.run_dir)  # RunDirError with what to do

    def __repr__(self) -> str:
        d = self.drill
        n = len(d.get("findings") or [])
        return (
            f"<trainlens report of run {d['run_id']}: {d['status']}, {d.get('steps', 0)} "
            f"steps, {n} finding{'s' if n != 1 else ''} ({self.run_dir})>"
        )

    def __str__(self) -> str:
        console = Console(record=True, width=100, color_system=None, highlight=False)
        console.print(self)
        return console.export_text()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from .terminal import load_report

        yield load_report(self.run_dir)

    def _repr_html_(self) -> str:
        from .html import run_dir_html

        return run_dir_html(self.run_dir)

    def _repr_markdown_(self) -> str:
        from .html import inline_markdown

        return inline_markdown(self.run_dir)


def report(run_dir: str | os.PathLike[str]) -> Report:
    """The report of a finished run, ready to display in a notebook or print in a terminal.

    Raises `RunDirError` with what to do when `run_dir` is not a finished run directory.
    """
    return Report(run_dir)


def lens_html(lens: Any) -> str | None:
    """A finished `Lens` in a notebook: its drill with the curves inline; None (IPython
    then shows the plain repr) while the block runs."""
    from .html import drill_html, run_dir_html

    if lens.drill is None:
        return None
    if (Path(lens.run_dir) / "drill.md").is_file():
        try:
            return run_dir_html(Path(lens.run_dir))
        except Exception:  # a damaged run dir: the drill in memory still shows
            pass
    return drill_html(lens.drill, [], None, standalone=False)


def lens_markdown(lens: Any) -> str | None:
    from .._drill import render_markdown
    from .html import inline_markdown

    if lens.drill is None:
        return None
    if (Path(lens.run_dir) / "drill.md").is_file():
        try:
            return inline_markdown(Path(lens.run_dir))
        except OSError:
            pass
    return render_markdown(lens.drill)
