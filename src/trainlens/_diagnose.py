"""`trainlens diagnose RUN_DIR`: (re)build a run's drill from its records.

Two cases. A run whose process died inside its block (SIGKILL, `os._exit`, a crash of
the interpreter) left only the records it streamed (`stream/`): they become the run's
records and its drill says it was rebuilt. A finished run gets the current rules and
installed plugins run again on its records (after an upgrade, or with a team's own
rule plugins); its records are left as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._errors import RunDirError
from ._finish import Written, finish_run
from ._plugins import get_plugin_manager
from ._run import check_records, load_records
from ._rundir import RunDirLock
from ._stream import has_stream, load_stream


def diagnose_run(run_dir: str | os.PathLike[str], *, entry_points: bool = True) -> Written:
    """Write the drill of `run_dir` from its records; RunDirError when it has none."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"{path} does not exist or is not a folder; give a run directory")
    lock = RunDirLock(path)
    try:
        lock.acquire()  # refused while the run is still going
    except PermissionError as err:
        raise RunDirError(
            f"cannot write to {path} ({err.strerror}); copy it somewhere writable"
        ) from None
    try:
        rebuilt = not (path / "run.json").is_file() and has_stream(path)
        # run dirs are untrusted input: the records are checked like `report` checks them
        if rebuilt:
            records = check_records(path, lambda: load_stream(path))
            records.meta["ended"] = {"how": "rebuilt", "step": _int(records.meta.get("steps"))}
            records.meta["exception"] = None
        else:
            records = load_records(path)
        run_id = records.meta.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            run_id = path.resolve().name
        pm = get_plugin_manager(entry_points=entry_points)
        return finish_run(pm, path, run_id, records, save_records=rebuilt)
    finally:
        lock.release()


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
