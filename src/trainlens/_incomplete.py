"""Findings that rest on records a stopped probe cut short.

A probe whose own code fails stops recording (`_probes/_base.py`), and the run goes on.
A rule that reads its tables sees them end early, and absence can read as evidence (no
step recorded looks like an optimizer that never stepped). Such a finding stays, as a
warning, its causes' confidence capped, each with a note of which records end where: an
honest "not sure" rather than a confident guess. Which tables a symptom reads is in its
recipe (`reads`); which tables a probe writes, in the probe (`Probe.writes`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ._catalogue import Catalogue
from ._finding import Finding

#: the confidence a cause keeps at most when its records are incomplete
MAX_CONFIDENCE = 0.5


def qualify(findings: list[Finding], meta: dict[str, Any], catalogue: Catalogue) -> list[Finding]:
    # a probe whose `finish` failed lost an end-of-run fact, not the records of the run
    stopped = [
        s for s in meta.get("probes_stopped") or () if s.get("tables") and s["where"] != "finish"
    ]
    if not stopped:
        return findings
    out = []
    for finding in findings:
        reads = set(catalogue[finding.symptom].reads) if finding.symptom in catalogue else set()
        cut = [(s, sorted(reads & set(s["tables"]))) for s in stopped]
        cut = [(s, tables) for s, tables in cut if tables]
        if not cut:
            out.append(finding)
            continue
        note = "; ".join(
            f"trainlens's {s['probe']} probe stopped at step {s['step']}, so its "
            f"{', '.join(tables)} records end there"
            for s, tables in cut
        )
        causes = [
            dataclasses.replace(
                c,
                confidence=min(c.confidence, MAX_CONFIDENCE),
                evidence=f"{c.evidence} ({note}: this rests on part of the run)",
            )
            for c in finding.likely_causes
        ]
        incomplete = [{"probe": s["probe"], "step": s["step"], "tables": t} for s, t in cut]
        out.append(
            dataclasses.replace(
                finding,
                severity="warning",
                likely_causes=causes,
                evidence={**finding.evidence, "incomplete_records": incomplete},
            )
        )
    return out
