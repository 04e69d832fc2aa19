"""Distributed runs (DDP under torchrun): each rank records alone, rank 0 merges via files.

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

import pandas as pd

from ._drill import run_status
from ._finding import Finding
from ._io import atomic_write_text
from ._records import TABLES, Records
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


def ranks_text(ranks: list[int], world_size: int) -> str:
    if len(ranks) == world_size:
        return f"on all {world_size} ranks"
    if len(ranks) == 1:
        return f"on rank {ranks[0]} only (of {world_size})"
    return f"on ranks {', '.join(map(str, ranks))} (of {world_size})"


def merge_rank_findings(
    per_rank: dict[int, list[dict[str, Any]]], world_size: int
) -> list[dict[str, Any]]:
    """One finding per (symptom, cause, module), naming the ranks where it holds."""
    groups: dict[tuple[Any, ...], list[tuple[int, dict[str, Any]]]] = {}
    for rank in sorted(per_rank):
        for f in per_rank[rank]:
            key = (f["symptom"], f["likely_cause"], f.get("module"))
            groups.setdefault(key, []).append((rank, f))
    merged = []
    for (symptom, cause, _), members in groups.items():
        ranks = sorted({r for r, _ in members})
        lead = dict(members[0][1])
        where = ranks_text(ranks, world_size)
        lead["severity"] = (
            "error" if any(f["severity"] == "error" for _, f in members) else "warning"
        )
        lead["likely_causes"] = [
            {**c, "evidence": f"{symptom}/{c['id']} {where}: {c['evidence']}"}
            for c in lead["likely_causes"]
        ]
        lead["evidence"] = {
            **(lead.get("evidence") or {}),
            "ranks": ranks,
            "world_size": world_size,
            "where": f"{cause} {where}",
        }
        merged.append(lead)
    order = {"error": 0, "warning": 1}
    merged.sort(key=lambda f: (order[f["severity"]], -f["likely_causes"][0]["confidence"]))
    return merged


def merge(
    run_id: str,
    reports: dict[int, dict[str, Any] | None],
    world_size: int,
    timeout: float,
) -> tuple[dict[str, Any], list[Finding], Records]:
    """The merged drill, its findings and the records of all ranks (with a `rank` column)."""
    present = {r: rep for r, rep in reports.items() if rep is not None}
    missing = sorted(r for r, rep in reports.items() if rep is None)
    findings = merge_rank_findings(
        {r: rep["drill"].get("findings", []) for r, rep in present.items()}, world_size
    )
    rows = []
    for r in range(world_size):
        rep = reports.get(r)
        if rep is None:
            rows.append({"rank": r, "status": "missing", "steps": None, "exception": None})
            continue
        d = rep["drill"]
        rows.append(
            {
                "rank": r,
                "status": d.get("status"),
                "steps": d.get("steps"),
                "findings": len(d.get("findings", [])),
                "exception": d.get("exception"),
                "failed_at": rep["marker"].get("failed_at"),
                "dir": f"rank-{r}",
            }
        )
    exc_rows = [row for row in rows if row.get("exception")]
    # the rank that failed first is the root cause; the others mostly lost their peer
    exc_rows.sort(key=lambda row: (row.get("failed_at") or float("inf"), row["rank"]))
    exception = None
    if exc_rows:
        first = exc_rows[0]
        exception = {**first["exception"], "rank": first["rank"]}
        exception["message"] = f"rank {first['rank']}: {exception.get('message', '')}"
    base = present.get(0, {}).get("drill") or (
        next(iter(present.values()))["drill"] if present else {}
    )
    failed = bool(missing) or any(row["status"] == "failed" for row in rows)
    failed = failed or any(f["severity"] == "error" for f in findings)
    drill = {
        "schema_version": base.get("schema_version", 1),
        "run_id": run_id,
        "status": run_status(failed, findings),
        "steps": int(max((row["steps"] or 0) for row in rows)) if rows else 0,
        "findings": findings,
        "exception": exception,
        "duration_s": base.get("duration_s"),
        "created": base.get("created"),
        "trainlens_version": base.get("trainlens_version"),
        "distributed": {
            "world_size": world_size,
            "ranks": rows,
            "missing_ranks": missing,
            "failed_ranks": [row["rank"] for row in exc_rows],
            "timeout_s": timeout,
        },
    }
    records = _merged_records(present, world_size, drill["distributed"])
    return drill, [Finding.from_dict(f) for f in findings], records


def _merged_records(
    present: dict[int, dict[str, Any]], world_size: int, summary: dict[str, Any]
) -> Records:
    frames: dict[str, list[pd.DataFrame]] = {}
    meta: dict[str, Any] = {}
    for r in sorted(present):
        try:
            rec = Records.load(present[r]["dir"])
        except Exception:  # a rank's records unreadable: the merged drill still stands
            continue
        if not meta:
            meta = dict(rec.meta)
        for name, frame in rec.frames.items():
            frames.setdefault(name, []).append(frame.assign(rank=r))
    merged_frames = {
        name: pd.concat(parts, ignore_index=True)
        for name, parts in frames.items()
        if name in TABLES or parts
    }
    meta["distributed"] = {**(meta.get("distributed") or {}), **summary, "merged": True}
    meta.pop("rank", None)
    return Records(merged_frames, meta)


def write_merged(
    plugins: list[Any],
    root: Path,
    drill: dict[str, Any],
    findings: list[Finding],
    records: Records,
) -> Written:
    from ._finish import finish_run
    from ._plugins import get_plugin_manager

    return finish_run(
        get_plugin_manager(plugins),
        root,
        drill["run_id"],
        records,
        findings=findings,
        drill=drill,
        sections=[("Ranks", ranks_section(drill))],
    )


def ranks_section(drill: dict[str, Any]) -> str:
    info = drill["distributed"]
    lines = [
        f"Merged from {info['world_size']} ranks; each rank's own records and drill are in "
        "`rank-<r>/`.",
        "",
        "| rank | status | steps | findings | stopped with |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in info["ranks"]:
        exc = row.get("exception")
        stopped = f"`{exc['type']}`: {str(exc.get('message', ''))[:120]}" if exc else ""
        if row["status"] == "missing":
            stopped = (
                f"never reported within {info['timeout_s']:g} s: crashed hard, was killed, "
                "or is still running (set TRAINLENS_RANK_TIMEOUT to wait longer)"
            )
        steps = "" if row.get("steps") is None else row["steps"]
        lines.append(
            f"| {row['rank']} | {row['status']} | {steps} | {row.get('findings', '')} | "
            f"{' '.join(stopped.split()).replace('|', '/')} |"
        )
    if info["missing_ranks"]:
        lines += ["", f"**Missing ranks:** {', '.join(map(str, info['missing_ranks']))}."]
    if info["missing_ranks"]:
        lines += [
            "",
            "A rank that crashed hard (killed, out of host memory, a segfault) writes no "
            "drill, so it most likely failed first; the exceptions of the others are then "
            "usually its consequence (a peer that left a collective).",
        ]
    elif info["failed_ranks"]:
        lines += [
            "",
            f"**Rank {info['failed_ranks'][0]} failed first**; the exceptions of later ranks "
            "are usually its consequence (a peer that left a collective).",
        ]
    return "\n".join(lines)


__all__ = [
    "RankRun",
    "TerminatedBySignal",
    "rank_and_world",
    "shared_run_id",
    "unwrap_model",
    "wrappers",
]
