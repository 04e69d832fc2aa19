"""`trainlens compare FAILED FIXED`: fill `result_after_fix` of the failed run from its rerun.

For each finding of the failed run: is the same symptom still present in the rerun, how did
the loss move (first/last/best, train and val), and how did the top cause's evidence
change. The result goes back into the failed run's `drill.json` (atomically) and
`drill.md`; the terminal shows before and after side by side. Both run dirs are untrusted
input: they are validated when loaded and every string from them is printed through
`terminal_safe`. A failed run dir that cannot be written still gets its comparison shown.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from .._errors import UsageError
from .._format import num, terminal_safe
from .._io import atomic_write_text
from .._records import Records
from .._run import Run, load_run
from .._views import json_float


def loss_summary(records: Records) -> dict[str, dict[str, Any] | None]:
    """First, last and best (lowest finite) loss per split, with their steps."""
    out: dict[str, dict[str, Any] | None] = {}
    for split, s in (("train", records.train_loss()), ("val", records.val_loss())):
        s = s.astype(float)
        if s.empty:
            out[split] = None
            continue
        finite = s[s.map(math.isfinite)]
        bad = s[~s.map(math.isfinite)]
        out[split] = {
            "first": json_float(s.iloc[0]),
            "last": json_float(s.iloc[-1]),
            "best": json_float(finite.min()) if len(finite) else None,
            "best_step": int(finite.idxmin()) if len(finite) else None,
            "first_non_finite_step": int(bad.index[0]) if len(bad) else None,
        }
    return out


def _loss_text(s: dict[str, Any] | None) -> str:
    if s is None:
        return "-"
    parts = [f"first {_n(s['first'])}", f"last {_n(s['last'])}"]
    if s["best"] is not None:
        parts.append(f"best {_n(s['best'])}")
    if s["first_non_finite_step"] is not None:
        parts.append(f"non-finite from step {s['first_non_finite_step']}")
    return ", ".join(parts)


def _get(s: dict[str, Any] | None, key: str) -> str:
    return "-" if s is None else _n(s[key])


def _n(x: float | None) -> str:
    return "non-finite" if x is None else num(x)


def _top(finding: dict[str, Any] | None) -> dict[str, Any] | None:
    return finding["likely_causes"][0] if finding else None


def result_for(finding: dict[str, Any], failed: Run, fixed: Run, fixed_dir: Path) -> dict[str, Any]:
    """The `result_after_fix` object of one finding: a `summary` line plus the numbers."""
    symptom = finding["symptom"]
    after = next((f for f in fixed.drill["findings"] if f["symptom"] == symptom), None)
    before_loss, after_loss = loss_summary(failed.records), loss_summary(fixed.records)
    top_before, top_after = _top(finding), _top(after)
    changed = sorted(
        k
        for k in set(finding.get("evidence") or {}) | set((after or {}).get("evidence") or {})
        if after is None or (finding.get("evidence") or {}).get(k) != after["evidence"].get(k)
    )
    exc = fixed.drill.get("exception")
    if after is None:
        head = (
            f"Fixed: {symptom} is gone in rerun {fixed.run_id} "
            f"(status {failed.drill['status']} → {fixed.drill['status']})."
        )
    else:
        head = (
            f"Not fixed: {symptom} is still there in rerun {fixed.run_id}, likely "
            f"{after['likely_cause']} ({top_after['evidence'] if top_after else ''})."
        )
    loss_parts = []
    for split in ("train", "val"):
        b, a = before_loss[split], after_loss[split]
        if b is None and a is None:
            continue
        loss_parts.append(
            f"{split.capitalize()} loss before → after: "
            + ", ".join(f"{k} {_get(b, k)} → {_get(a, k)}" for k in ("first", "last", "best"))
            + "."
        )
    summary = " ".join(
        [head] + ([f"The rerun stopped with {exc['type']}."] if exc else []) + loss_parts
    )
    return {
        "summary": summary,
        "fixed_run_id": fixed.run_id,
        "fixed_run_dir": str(fixed_dir),
        "symptom_gone": after is None,
        "status_before": failed.drill["status"],
        "status_after": fixed.drill["status"],
        "steps_before": int(failed.drill.get("steps", 0)),
        "steps_after": int(fixed.drill.get("steps", 0)),
        "exception_after": exc["type"] if exc else None,
        "likely_cause_after": after["likely_cause"] if after else None,
        "evidence_before": top_before["evidence"] if top_before else None,
        "evidence_after": top_after["evidence"] if top_after else None,
        "evidence_changed": changed,
        "loss_before": before_loss,
        "loss_after": after_loss,
        "compared_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _plain(value: Any, style: str = "") -> Text:
    return Text(terminal_safe(value), style=style)


#: findings compared in the terminal (a real drill has a handful; drill.json gets them all)
MAX_SHOWN = 20


class Comparison:
    """Before/after side by side, and what was written back (or why it could not be)."""

    def __init__(
        self,
        failed: Run,
        fixed: Run,
        results: list[dict[str, Any]],
        write_error: str | None = None,
    ):
        self.failed = failed
        self.fixed = fixed
        self.results = results
        #: why result_after_fix could not be written into the failed run dir, or None
        self.write_error = write_error

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        fd, xd = self.failed.drill, self.fixed.drill
        table = Table(box=box.SIMPLE_HEAD, title="trainlens compare", title_justify="left")
        table.add_column("", style="bold", no_wrap=True)
        table.add_column(_plain(f"before: {fd['run_id']}"), overflow="fold", ratio=1)
        table.add_column(_plain(f"after: {xd['run_id']}"), overflow="fold", ratio=1)

        def status(d: dict[str, Any]) -> Text:
            style = {"healthy": "green", "warning": "yellow"}.get(d["status"], "red")
            return _plain(d["status"], style=style)

        table.add_row("status", status(fd), status(xd))
        table.add_row("steps", Text(str(fd.get("steps", 0))), Text(str(xd.get("steps", 0))))
        fe, xe = fd.get("exception"), xd.get("exception")
        table.add_row(
            "exception", _plain(fe["type"] if fe else "none"), _plain(xe["type"] if xe else "none")
        )
        bl, al = loss_summary(self.failed.records), loss_summary(self.fixed.records)
        for split in ("train", "val"):
            if bl[split] or al[split]:
                table.add_row(
                    f"{split} loss", Text(_loss_text(bl[split])), Text(_loss_text(al[split]))
                )
        shown = list(zip(fd["findings"], self.results, strict=True))[:MAX_SHOWN]
        for f, r in shown:
            table.add_row("", Text(""), Text(""))
            table.add_row(
                _plain(f["symptom"]),
                _plain(f"{f['severity']}: likely {f['likely_cause']}", style="red"),
                Text("gone", style="bold green")
                if r["symptom_gone"]
                else _plain(f"still there: likely {r['likely_cause_after']}", style="bold red"),
            )
            table.add_row(
                "  evidence",
                _plain(r["evidence_before"] or "-"),
                _plain(r["evidence_after"] or "-"),
            )
        if len(self.results) > MAX_SHOWN:
            more = f"{len(self.results) - MAX_SHOWN} more findings"
            table.add_row("", Text(f"… {more} in drill.json", style="dim"), Text(""))
        new = sorted(
            {f["symptom"] for f in xd["findings"]} - {f["symptom"] for f in fd["findings"]}
        )
        if new:
            table.add_row("new in rerun", Text(""), _plain(", ".join(new), style="yellow"))
        parts: list[Any] = [table]
        if not self.results:
            parts.append(Text("The failed run has no findings: nothing to fill in.", style="dim"))
        for f, r in shown:
            parts.append(
                Text.assemble((terminal_safe(f"{f['symptom']}: "), "bold"), _plain(r["summary"]))
            )
        if self.results and self.write_error:
            where = self.failed.run_dir
            not_saved = f"result_after_fix NOT saved in {where}: {self.write_error}"
            parts.append(_plain(not_saved, "red"))
        elif self.results:
            where = self.failed.run_dir / "drill.json"
            parts.append(_plain(f"result_after_fix written to {where} and drill.md", "dim"))
        yield Group(*parts)


def compare_runs(
    failed_dir: str | os.PathLike[str], fixed_dir: str | os.PathLike[str]
) -> Comparison:
    """Fill `result_after_fix` of every finding of the failed run and write it back."""
    from .._finish import finish_run
    from .._plugins import get_plugin_manager, report_sections
    from .html import FILENAME as HTML
    from .html import drill_html

    failed_path, fixed_path = Path(failed_dir), Path(fixed_dir)
    failed, fixed = load_run(failed_path), load_run(fixed_path)
    if failed.run_id == fixed.run_id:
        raise UsageError(
            f"{failed_path} and {fixed_path} are the same run ({failed.run_id}); give the "
            "failed run first and the rerun after the fix second"
        )
    results = [result_for(f, failed, fixed, fixed_path) for f in failed.drill["findings"]]
    write_error: str | None = None
    if results:
        drill = failed.drill
        for f, r in zip(drill["findings"], results, strict=True):
            f["result_after_fix"] = r
        pm = get_plugin_manager()
        written = finish_run(
            pm,
            failed_path,
            failed.run_id,
            failed.records,
            drill=drill,
            save_records=False,
            artifacts=False,
        )
        lost = list(written.lost)
        if not lost:  # drill.html embeds drill.md's content: rewritten with it
            try:
                sections = report_sections(pm, written.drill, failed.records, [])  # said above
                html = drill_html(written.drill, sections, failed_path)
                atomic_write_text(failed_path / HTML, html)
            except OSError as exc:
                lost.append(f"{HTML} ({exc.strerror or type(exc).__name__})")
        if lost:  # a read-only run dir is no reason to hide the comparison: shown, not saved
            write_error = (
                f"could not write into {failed_path}: {'; '.join(lost)}; copy the run dir "
                "somewhere writable and run compare there"
            )
    return Comparison(failed, fixed, results, write_error)
