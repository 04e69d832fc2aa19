"""Rank 0's merge of a DDP run: one finding per (symptom, cause, module) naming the ranks
where it holds, the ranks' records with a `rank` column, the Ranks section of drill.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ._drill import run_status
from ._finding import Finding
from ._records import TABLES, Records

if TYPE_CHECKING:
    from ._finish import Written


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
