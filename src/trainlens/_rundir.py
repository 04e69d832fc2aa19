"""A run directory belongs to one run: safe run ids, one owner at a time, a fresh start.

Ownership is a lock file held with `flock` for as long as the run writes: the kernel
drops it when the process dies, so the lock of a killed run is never stale. Where
`flock` does not exist (Windows) the lock file is created with `O_EXCL` and holds the
owner's pid; a lock whose pid is gone on this host is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

from ._errors import RunDirError, UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK = ".trainlens.lock"
#: the folder of records streamed while the run goes (removed once the run is written)
STREAM = "stream"
#: where the files of the previous run in a reused run dir are moved
PREVIOUS_SUFFIX = ".previous"

# files and folders a run writes; only these are moved aside when a run dir is reused
# (a run_dir pointed at a folder of the user's own files must never lose them)
_RUN_FILES = ("drill.json", "drill.md", "drill.html", "run.json", "README.md", "done")
_RUN_SUFFIXES = (".parquet", ".png", ".pt")


def check_run_id(run_id: Any) -> None:
    """A run id is one safe path component: it names a folder under the runs root."""
    if run_id is None:
        return
    problem = None
    if not isinstance(run_id, str) or not run_id:
        problem = "it must be a non-empty string"
    elif run_id in (".", ".."):
        problem = "'.' and '..' name existing folders, not a new run"
    elif "\x00" in run_id:
        problem = "it contains a NUL byte"
    elif any(sep and sep in run_id for sep in ("/", "\\", os.sep, os.altsep)):
        problem = "it contains a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in run_id):
        problem = "it contains a control character"
    elif len(run_id.encode("utf-8", "surrogatepass")) > 200:
        problem = "it is longer than 200 bytes"
    if problem:
        raise UsageError(
            f"run_id {run_id!r} is not usable: {problem}. Use one folder name such as "
            "'exp1-lr3e-4', or pass run_dir= for a path"
        )


class RunDirLock:
    """Holds `run_dir/.trainlens.lock` while a run owns `run_dir`."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        for _ in range(8):  # a lock file removed under us by its releasing owner: retry
            if fcntl is not None:
                if self._try_flock():
                    return
            elif self._try_excl():  # pragma: no cover - Windows
                return
        raise RunDirError(f"could not lock {self.path}; pass run_dir= another folder")

    def _try_flock(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _read_owner(fd)
            os.close(fd)
            raise RunDirError(_busy_message(self.path.parent, owner)) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if not same:  # the file we locked was unlinked by the owner that just left
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, _owner_json())
        self._fd = fd
        return True

    def _try_excl(self) -> bool:  # pragma: no cover - Windows
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                owner = {}
            if owner.get("host") == socket.gethostname() and not _alive(owner.get("pid")):
                with contextlib.suppress(OSError):
                    self.path.unlink()  # stale: its process is gone
                return False
            raise RunDirError(_busy_message(self.path.parent, owner)) from None
        os.write(fd, _owner_json())
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # before unlocking: a waiter re-checks the inode
        with contextlib.suppress(OSError):
            os.close(fd)


def _owner_json() -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        owner = json.loads(os.read(fd, 4096) or b"{}")
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid: Any) -> bool:  # pragma: no cover - Windows
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _busy_message(run_dir: Path, owner: dict[str, Any]) -> str:
    who = (
        f"process {owner.get('pid')} on {owner.get('host')}"
        if owner.get("pid")
        else "another process"
    )
    return (
        f"run_dir {run_dir} is in use by {who}: a run directory holds one run. Give this "
        "run its own run_dir (or leave run_dir unset for a fresh one under trainlens-runs/)"
    )


def ensure_writable(run_dir: Path) -> None:
    """Create `run_dir` and prove it writable; RunDirError before any training if not."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise RunDirError(
            f"cannot write to run_dir {run_dir} ({err.strerror or err}); pass "
            "run_dir= a folder you can write to"
        ) from None


def claim(run_dir: Path, *, fresh: bool = True) -> RunDirLock:
    """Create `run_dir`, prove it writable, lock it, and move an earlier run's files aside.

    Raises RunDirError before any training when the folder cannot be written or is
    owned by a live run.
    """
    ensure_writable(run_dir)
    lock = RunDirLock(run_dir)
    lock.acquire()
    if fresh:
        try:
            _move_earlier_run_aside(run_dir)
        except OSError as err:
            lock.release()
            raise RunDirError(
                f"run_dir {run_dir} holds an earlier run whose files could not be moved "
                f"aside ({err.strerror or err}); remove them or pass another run_dir"
            ) from None
    return lock


def _earlier_run_files(run_dir: Path) -> list[Path]:
    found = []
    for p in run_dir.iterdir():
        name = p.name
        if p.is_dir():
            if name == STREAM or (name.startswith("rank-") and name[5:].isdigit()):
                found.append(p)
        elif name in _RUN_FILES or name.endswith(_RUN_SUFFIXES):
            found.append(p)
    return found


def _move_earlier_run_aside(run_dir: Path) -> None:
    files = _earlier_run_files(run_dir)
    # only a folder that held a trainlens run: never touch a user's own files
    if not any(p.name in ("run.json", "drill.json", STREAM) for p in files):
        return
    old_id = _earlier_run_id(run_dir)
    aside = run_dir.with_name(run_dir.name + PREVIOUS_SUFFIX)
    replaced = aside.exists()
    if replaced:
        shutil.rmtree(aside)
    aside.mkdir()
    for p in files:
        os.replace(p, aside / p.name)
    warnings.warn(
        f"run_dir {run_dir} held an earlier run{f' ({old_id})' if old_id else ''}: its "
        f"files were moved to {aside}{' (replacing an older copy)' if replaced else ''}, so "
        "this run starts from an empty folder",
        RuntimeWarning,
        stacklevel=4,
    )


def _earlier_run_id(run_dir: Path) -> str | None:
    for path in (run_dir / "run.json", run_dir / STREAM / "run.json", run_dir / "drill.json"):
        try:
            value = json.loads(path.read_text(encoding="utf-8")).get("run_id")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str):
            return value[:80]
    return None


def lock_owner(run_dir: Path) -> dict[str, Any] | None:
    """The live owner of `run_dir`, or None (used by `trainlens diagnose`)."""
    path = run_dir / LOCK
    if not path.exists():
        return None
    if fcntl is None:  # pragma: no cover - Windows
        try:
            owner = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return owner if _alive(owner.get("pid")) else None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_owner(fd) or {"pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
