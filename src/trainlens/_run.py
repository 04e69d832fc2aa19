"""Reading a finished run back from its directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._drill import read_drill
from ._finding import Finding
from ._records import Records


@dataclass
class Run:
    """A finished run: its drill (as in `drill.json`), findings and records."""

    run_dir: Path
    drill: dict[str, Any]
    records: Records

    @property
    def findings(self) -> list[Finding]:
        return [Finding.from_dict(f) for f in self.drill["findings"]]

    @property
    def run_id(self) -> str:
        return self.drill["run_id"]

    def _repr_html_(self) -> str:  # a notebook shows the drill, curves inline
        from ._report.html import run_dir_html

        return run_dir_html(self.run_dir)


def load_run(run_dir: str | os.PathLike[str]) -> Run:
    """Read `drill.json` and the records of a run directory written by `watch`.

    Raises `RunDirError` with what to do when the folder is missing, is not a run
    directory, or holds a corrupt drill or records.
    """
    path = Path(run_dir)
    drill = read_drill(path)
    return Run(run_dir=path, drill=drill, records=Records.load(path))
