"""Records streamed to the run dir while the run goes, so a killed process leaves them.

Layout, under `run_dir/stream/`: `run.json` (the run's metadata so far) and one folder
per table of parquet parts `<seq>.parquet` (rows appended since the previous part) and
`<seq>-base.parquet` (all the rows the table holds, written after the table was thinned
or once it has many parts, so the parts on disk stay bounded like the table in memory).
A table is its latest base plus the parts after it. Every file is written to a temporary
name and renamed, so a SIGKILL never leaves a torn part; parts are not fsynced (a killed
process loses nothing the kernel already has; only a power cut could).

When: at the end of a step once `STREAM_EVERY_S` seconds have passed since the last
write (the first after `FIRST_STREAM_S`), checked against the step clock the step table
already reads, so there is no extra per-step work. A SIGKILL loses at most the records
of the last `STREAM_EVERY_S` seconds (plus the step in flight). The final write removes
the folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ._errors import RunDirError
from ._io import atomic_write_bytes, atomic_write_text
from ._records import Records, Table, parquet_bytes
from ._rundir import STREAM

FIRST_STREAM_S = 2.0
STREAM_EVERY_S = 10.0
#: a table with this many parts since its base gets a fresh base
MAX_PARTS = 16

_PART = re.compile(r"^(\d{8})(-base)?\.parquet$")


class RecordStream:
    """Writes what the tables gained since the last write; disables itself on failure."""

    def __init__(self, run_dir: Path, tables: dict[str, Table], meta: Callable[[], dict]):
        self.dir = run_dir / STREAM
        self.tables = tables
        self.meta = meta
        self.error: BaseException | None = None
        self.error_step: int | None = None
        self.listeners: list[Callable[[], None]] = []  # e.g. the checkpoint's persist
        self._seq = 0
        # per table: (generation of the rows on disk, rows on disk, parts since the base)
        self._done: dict[str, tuple[int, int, int]] = {}

    def write(self, step: int) -> None:
        if self.error is not None:
            return
        try:
            if not self._seq:
                self.dir.mkdir(exist_ok=True)
            for listener in self.listeners:
                listener()
            for name, table in self.tables.items():
                self._write_table(name, table)
            self._seq += 1
            atomic_write_text(
                self.dir / "run.json",
                json.dumps(self.meta(), indent=1, default=str),
                durable=False,
            )
        except Exception as err:
            self.error, self.error_step = err, step

    def _write_table(self, name: str, table: Table) -> None:
        gen, on_disk, parts = self._done.get(name, (-1, 0, 0))
        rows = len(table)
        if (gen == table.generation and rows == on_disk) or (gen == -1 and rows == 0):
            return
        folder = self.dir / name
        if gen == -1:
            folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        if gen != table.generation or parts >= MAX_PARTS:
            atomic_write_bytes(
                folder / f"{self._seq:08d}-base.parquet",
                parquet_bytes(table.frame()),
                durable=False,
            )
            for old in folder.iterdir():  # what the new base replaces
                m = _PART.match(old.name)
                if m and int(m.group(1)) < self._seq:
                    old.unlink(missing_ok=True)
            self._done[name] = (table.generation, rows, 0)
        else:
            atomic_write_bytes(
                folder / f"{self._seq:08d}.parquet",
                parquet_bytes(table.frame(on_disk)),
                durable=False,
            )
            self._done[name] = (gen, rows, parts + 1)


def has_stream(run_dir: Path) -> bool:
    return (run_dir / STREAM / "run.json").is_file()


def load_stream(run_dir: Path) -> Records:
    """The records a run streamed (of a process that died before its block ended)."""
    folder = run_dir / STREAM
    try:
        meta = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(
            f"{run_dir} has no streamed records ({STREAM}/run.json): not a trainlens run "
            "directory, or its run never reached its first write (after "
            f"{FIRST_STREAM_S:g} s)"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunDirError(f"{folder / 'run.json'} is unreadable or corrupt: {exc}") from None
    if not isinstance(meta, dict):
        raise RunDirError(f"{folder / 'run.json'} is not a trainlens run.json")
    frames = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        parts = sorted((m.group(1), bool(m.group(2)), p) for p in sub.iterdir()
                       if (m := _PART.match(p.name)))  # fmt: skip
        bases = [i for i, (_, base, _) in enumerate(parts) if base]
        use = parts[bases[-1] :] if bases else parts
        if not use:
            continue
        try:
            frames[sub.name] = pd.concat([pd.read_parquet(p) for _, _, p in use], ignore_index=True)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise RunDirError(f"{sub} holds an unreadable part: {exc}") from None
    return Records(frames, meta)


__all__ = ["FIRST_STREAM_S", "STREAM_EVERY_S", "RecordStream", "has_stream", "load_stream"]
