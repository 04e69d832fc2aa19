"""The live progress bar of an overfit run (`quiet=False`, the CLI)."""

from __future__ import annotations

import math

from .._format import num


class Progress:
    """A rich progress bar with the current loss, on stderr (stdout stays for results)."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
        from rich.progress import Progress as RichProgress

        console = Console(stderr=True)
        # a live bar in Jupyter needs ipywidgets and warns without it: one line at the end
        self._notebook: tuple[Console, int, float] | None = None
        if console.is_jupyter:
            self._notebook = (console, 0, math.nan)
            return
        self._progress = RichProgress(
            TextColumn("overfitting one batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task("overfit", total=total, loss="-")
        self._progress.start()

    def extend(self, total: int) -> None:
        if self._notebook is None:
            self._progress.update(self._task, total=total)

    def update(self, step: int, loss: float) -> None:
        if self._notebook is not None:
            self._notebook = (self._notebook[0], step, loss)
            return
        self._progress.update(self._task, completed=step, loss=num(float(loss)))

    def close(self) -> None:
        if self._notebook is not None:
            console, step, loss = self._notebook
            console.print(
                f"overfitting one batch: {step} steps, loss {num(float(loss))}", markup=False
            )
            return
        self._progress.stop()
