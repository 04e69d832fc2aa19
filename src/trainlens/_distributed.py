"""Distributed runs (DDP under torchrun): each rank records alone, rank 0 merges via files.

This module finds the rank and the shared run id and waits for the ranks' markers; the
merge itself is `_merge`, SIGTERM handling `_signals`, unwrapping DDP `_wrappers`.

trainlens never issues a collective: a rank that crashed, hung or skipped a step would
make any `all_gather` of ours hang the healthy ranks. Instead each rank writes its own
records and partial drill into `run_dir/rank-<r>/`, then an atomic `done` marker; rank 0
waits for the others' markers (with a timeout, naming any rank that never reports) and
writes the merged drill into `run_dir`, each finding naming the ranks where it holds.

torchrun stops the surviving ranks with SIGTERM when one fails. While a distributed
block runs, SIGTERM (if nobody else handles it) raises `TerminatedBySignal` so the block
unwinds and this rank's records are written; while trainlens writes, a SIGTERM is held
back and delivered once the files are on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._io import atomic_write_text
from ._merge import merge, merge_rank_findings, write_merged
from ._signals import SigtermGuard, TerminatedBySignal
from ._wrappers import unwrap_model, wrappers

if TYPE_CHECKING:
    from ._finish import Written

#: seconds rank 0 waits for the other ranks' `done` markers (env TRAINLENS_RANK_TIMEOUT)
DEFAULT_TIMEOUT_S = 60.0
#: once the launcher has asked this process to stop, wait at most this long (torchrun
#: sends SIGKILL 30 s after SIGTERM)
TERMINATING_TIMEOUT_S = 10.0
DONE = "done"


def rank_and_world() -> tuple[int, int] | None:
    """(rank, world size) of a multi-process run, or None for a single process."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()  # local reads, not collectives
            return (dist.get_rank(), world) if world > 1 else None
    except Exception:  # pragma: no cover - a broken distributed build: single process
        pass
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    return (rank, world) if world > 1 and 0 <= rank < world else None


def shared_run_id() -> str | None:
    """A run id every rank derives alike without talking: from the launcher's environment."""
    rdzv = os.environ.get("TORCHELASTIC_RUN_ID")
    if rdzv and rdzv != "none":
        return f"ddp-{rdzv}"
    port = os.environ.get("MASTER_PORT")
    local, world = os.environ.get("LOCAL_WORLD_SIZE"), os.environ.get("WORLD_SIZE")
    if port and local is not None and local == world:
        # one machine: every rank is a child of the same launcher process
        return f"ddp-{port}-{os.getppid()}"
    return None


_BLOCKS = [0]


def shared_run_id_if_distributed() -> str | None:
    """Every rank runs the same watch blocks in the same order: number them alike."""
    if rank_and_world() is None or (run_id := shared_run_id()) is None:
        return None
    _BLOCKS[0] += 1
    return run_id if _BLOCKS[0] == 1 else f"{run_id}-{_BLOCKS[0]}"


class RankRun:
    """This process's part of a distributed run."""

    def __init__(self, rank: int, world_size: int, root: Path):
        self.rank = rank
        self.world_size = world_size
        self.root = root
        # SIGTERM (torchrun stopping the ranks) unwinds the block as TerminatedBySignal
        self.guard = SigtermGuard(distributed=True)

    @classmethod
    def start(cls, run_dir: Path, prepare: Callable[[Path], Path]) -> RankRun | None:
        """On a multi-process run, this rank's part of it (writing `run_dir/rank-<r>/`)."""
        rw = rank_and_world()
        if rw is None:
            return None
        return cls(rw[0], rw[1], prepare(run_dir))

    @property
    def dir(self) -> Path:
        return self.root / f"rank-{self.rank}"

    def describe(self) -> dict[str, Any]:
        backend = None
        with contextlib.suppress(Exception):
            import torch.distributed as dist

            if dist.is_initialized():
                backend = str(dist.get_backend())
        return {"rank": self.rank, "world_size": self.world_size, "backend": backend}

    @property
    def terminating(self) -> bool:
        return self.guard.terminating

    # --- leaving ---------------------------------------------------------------------
    def finish(
        self,
        run_id: str,
        drill: dict[str, Any] | None,
        exc: BaseException | None,
        failed_at: float | None,
        plugins: list[Any],
    ) -> Written | None:
        """Mark this rank done; on rank 0, wait for the others and write the merged run
        (returned; None on the other ranks)."""
        drill = drill or {}
        marker = {
            "rank": self.rank,
            "world_size": self.world_size,
            "status": drill.get("status"),
            "steps": drill.get("steps"),
            "exception": None if exc is None else type(exc).__name__,
            "finished_at": time.time(),
            "failed_at": failed_at,
        }
        if drill:
            atomic_write_text(self.dir / DONE, json.dumps(marker) + "\n")
        if self.rank != 0:
            return None
        timeout = _timeout()
        reports = self.collect(timeout)
        merged, findings, records = merge(run_id, reports, self.world_size, timeout)
        return write_merged(plugins, self.root, merged, findings, records)

    def collect(self, timeout: float) -> dict[int, dict[str, Any] | None]:
        """Each rank's done marker and drill; None for a rank that never reported."""
        deadline = time.monotonic() + timeout
        pending = set(range(self.world_size))
        reports: dict[int, dict[str, Any] | None] = {r: None for r in pending}
        while pending:
            for r in sorted(pending):
                report = _read_report(self.root / f"rank-{r}")
                if report is not None:
                    reports[r] = report
                    pending.discard(r)
            if not pending:
                break
            now = time.monotonic()
            if self.terminating:
                deadline = min(deadline, now + TERMINATING_TIMEOUT_S)
            if now >= deadline:
                break
            time.sleep(0.05)
        return reports


def _timeout() -> float:
    try:
        return max(0.0, float(os.environ.get("TRAINLENS_RANK_TIMEOUT", DEFAULT_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def _read_report(rank_dir: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((rank_dir / DONE).read_text(encoding="utf-8"))
        drill = json.loads((rank_dir / "drill.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {"marker": marker, "drill": drill, "dir": rank_dir}


__all__ = [
    "RankRun",
    "TerminatedBySignal",
    "merge_rank_findings",
    "rank_and_world",
    "shared_run_id",
    "unwrap_model",
    "wrappers",
]
