"""The one path that writes a run: records, drill.json, artifacts, drill.md.

Every caller goes through `finish_run`: a watch block, `trainlens diagnose`, the DDP
merge and `trainlens compare`; overfit-one-batch adds its top-level `overfit` field
through the `trainlens_drill_fields` hook before the write. Callers hand in what they
know (findings already merged, extra sections, extra drill fields) instead of
rewriting files afterwards.

Order, so that the run dir is loadable at every point (a second Ctrl-C, a kill): the
records (run.json and parquet tables) first, then `drill.json`, then the artifacts and
`drill.md`; the streamed records are removed only once records and drill are on disk.
A failure to write (full disk, file-size limit, folder removed) never raises: it is
listed in `Written.lost`, and the caller turns it into one warning.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from ._drill import build_drill, render_markdown
from ._finding import Finding, _jsonable
from ._io import atomic_write_text
from ._plugins import catalogue_for, diagnose, drill_fields, report_sections, write_artifacts
from ._records import Records
from ._rundir import STREAM


@dataclass
class Written:
    """What `finish_run` produced and what it could not write."""

    drill: dict[str, Any]
    findings: list[Finding]
    records: Records
    run_dir: Path
    #: "what (error)" for each file or group of files not written
    lost: list[str] = field(default_factory=list)
    plugin_errors: list[dict[str, str]] = field(default_factory=list)


def finish_run(
    pm: pluggy.PluginManager,
    run_dir: Path,
    run_id: str,
    records: Records,
    *,
    findings: Sequence[Finding] | None = None,
    drill: dict[str, Any] | None = None,
    sections: Sequence[tuple[str, str]] = (),
    save_records: bool = True,
    artifacts: bool = True,
) -> Written:
    """Diagnose (unless `findings` or a ready `drill` are given) and write the run.

    `sections` come before the plugins' sections in drill.md (the DDP merge's ranks).
    `save_records=False` leaves the records on disk as they are (a rerun of the rules,
    `compare`); `artifacts=False` writes only drill.json and drill.md (`compare`).
    """
    failures: list[dict[str, str]] = []
    if drill is None:
        if findings is None:
            findings = diagnose(pm, records, catalogue_for(pm), failures)
        drill = build_drill(run_id, findings, records.meta)
    else:
        drill = dict(drill)
        if findings is None:
            findings = [Finding.from_dict(f) for f in drill.get("findings", [])]
    drill.update(drill_fields(pm, drill, records, failures))
    out = Written(drill, list(findings), records, run_dir, plugin_errors=failures)
    _set_plugin_errors(drill, failures)

    records_ok = not save_records or _attempt(
        out, "records (run.json, *.parquet)", lambda: records.save(run_dir)
    )
    drill_ok = _attempt(out, "drill.json", lambda: _write_json(run_dir, drill))
    if artifacts:
        _attempt(out, "artifacts", lambda: write_artifacts(pm, run_dir, drill, records, failures))
    every = [*sections, *report_sections(pm, drill, records, failures)]
    _attempt(
        out,
        "drill.md",
        lambda: atomic_write_text(run_dir / "drill.md", render_markdown(drill, every)),
    )
    if failures and _set_plugin_errors(drill, failures) and drill_ok:
        _attempt(out, "drill.json", lambda: _write_json(run_dir, drill))
    if records_ok and drill_ok and (run_dir / STREAM).exists():
        # the final files replace what was streamed; a failure here costs only disk space
        shutil.rmtree(run_dir / STREAM, ignore_errors=True)
    return out


def _write_json(run_dir: Path, drill: dict[str, Any]) -> None:
    text = json.dumps(_jsonable(drill), indent=2, default=str)  # no NaN: JSON has none
    atomic_write_text(run_dir / "drill.json", text + "\n")


def _set_plugin_errors(drill: dict[str, Any], failures: list[dict[str, str]]) -> bool:
    """List broken plugins in the drill; True when that changed it."""
    if not failures or drill.get("plugin_errors") == failures:
        return False
    drill["plugin_errors"] = list(failures)
    return True


def _attempt(out: Written, what: str, write: Any) -> bool:
    try:
        write()
    except Exception as err:  # OSError mostly; a torn write is never left (atomic)
        out.lost.append(f"{what} ({type(err).__name__}: {err})")
        return False
    return True


def problems_message(
    run_id: str, run_dir: Path, lost: Sequence[str], plugin_errors: Sequence[dict[str, str]]
) -> str | None:
    """The one warning for everything of a run that went wrong in trainlens: files not
    written, plugins that failed. None when nothing did."""
    parts = []
    if plugin_errors:
        parts.append(
            "; ".join(f"{e.get('what', e['plugin'])}: {e['error']}" for e in plugin_errors)
            + " (listed in the drill's plugin_errors)"
        )
    ended = [x for x in lost if "'s end (" in x]  # a probe's finish() failed: not the disk
    lost = [x for x in lost if x not in ended]
    if ended:
        parts.append(
            "could not finish " + "; ".join(ended) + " (what that probe records at the end "
            "of a run is missing from the drill; the rest is complete)"
        )
    if lost:
        parts.append(
            f"could not write all of run {run_id} to {run_dir}: lost "
            + "; ".join(lost)
            + ". Your program is unaffected; the drill is still in lens.drill and the "
            "records in lens.records (free disk space or pass run_dir= elsewhere next time)"
        )
    return "trainlens " + ". ".join(parts) if parts else None
