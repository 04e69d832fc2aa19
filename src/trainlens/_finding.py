"""Findings: what a rule concluded, ranked causes first, ready for the drill."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("error", "warning")


@dataclass(frozen=True)
class Cause:
    """One likely cause of a symptom, with the evidence that points to it.

    `module`, `step`, `first_check` and `fix_attempt` are per cause because the finding
    shows those of its top-ranked cause: what to do depends on why, not only on what.
    """

    id: str
    confidence: float
    evidence: str
    module: str | None = None
    step: int | None = None
    first_check: str | None = None
    fix_attempt: str | None = None
    #: the first step at which this cause's evidence shows (None: not known); ranking
    #: reads it to put a root cause before its consequences (`Catalogue.rank`)
    onset: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "confidence": round(float(self.confidence), 3),
            "evidence": self.evidence,
        }
        if self.module is not None:
            out["module"] = self.module
        if self.step is not None:
            out["step"] = int(self.step)
        return out


@dataclass
class Finding:
    """A symptom seen in a run, its ranked likely causes and what to check and try."""

    symptom: str
    severity: str
    likely_causes: list[Cause]
    first_check: str
    fix_attempt: str
    module: str | None = None
    step: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    result_after_fix: str | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")
        if not self.likely_causes:
            raise ValueError(f"a {self.symptom} finding needs at least one likely cause")
        self.likely_causes = sorted(self.likely_causes, key=lambda c: -c.confidence)

    @property
    def likely_cause(self) -> str:
        return self.likely_causes[0].id

    @property
    def top(self) -> Cause:
        return self.likely_causes[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "symptom": self.symptom,
            "severity": self.severity,
            "module": self.module,
            "step": None if self.step is None else int(self.step),
            "first_check": self.first_check,
            "likely_causes": [c.to_dict() for c in self.likely_causes],
            "likely_cause": self.likely_cause,
            "fix_attempt": self.fix_attempt,
            "result_after_fix": self.result_after_fix,
            "evidence": _jsonable(self.evidence),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        causes = [
            Cause(
                id=c["id"],
                confidence=float(c["confidence"]),
                evidence=c["evidence"],
                module=c.get("module"),
                step=c.get("step"),
            )
            for c in data["likely_causes"]
        ]
        return cls(
            symptom=data["symptom"],
            severity=data["severity"],
            likely_causes=causes,
            first_check=data["first_check"],
            fix_attempt=data["fix_attempt"],
            module=data.get("module"),
            step=data.get("step"),
            evidence=dict(data.get("evidence") or {}),
            result_after_fix=data.get("result_after_fix"),
        )

    def summary(self) -> str:
        """One line a newcomer can act on: what, where, the top cause and its evidence."""
        where = f" in `{self.module}`" if self.module else ""
        when = f" at step {self.step}" if self.step is not None else ""
        return (
            f"{self.severity}: {self.symptom}{where}{when}: likely {self.likely_cause} "
            f"({self.top.evidence})"
        )

    def __repr__(self) -> str:
        return f"<Finding {self.summary()}>"

    # notebook displays (IPython's rich display protocol)
    def _repr_html_(self) -> str:
        from markdown_it import MarkdownIt  # rich's own Markdown parser: always installed

        return MarkdownIt("commonmark", {"html": False}).render(self._repr_markdown_())

    def _repr_markdown_(self) -> str:
        return "\n".join(finding_markdown(1, "-", self.to_dict())).replace("### 1. ", "### ", 1)


def merge_findings(findings: list[Finding]) -> list[Finding]:
    """Fold findings of the same symptom into one, causes ranked across all of them.

    Plugins may add causes to a built-in symptom; the user reads one finding per symptom
    with the most likely cause first, and its where/what-to-do come from that cause.
    """
    by_symptom: dict[str, list[Finding]] = {}
    for f in findings:
        by_symptom.setdefault(f.symptom, []).append(f)
    merged = []
    for group in by_symptom.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        best: dict[str, Cause] = {}
        for f in group:
            for c in f.likely_causes:
                if c.id not in best or c.confidence > best[c.id].confidence:
                    best[c.id] = c
        lead = max(group, key=lambda f: f.top.confidence)
        evidence: dict[str, Any] = {}
        for f in group:
            evidence.update(f.evidence)
        merged.append(
            dataclasses.replace(
                lead,
                severity="error" if any(f.severity == "error" for f in group) else "warning",
                likely_causes=list(best.values()),
                evidence=evidence,
            )
        )
    order = {"error": 0, "warning": 1}
    return sorted(merged, key=lambda f: (order[f.severity], -f.top.confidence))


def _jsonable(value: Any) -> Any:
    """Numpy scalars, tuples and torch.Size become plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them readable
    return value


#: the six fields of a failure drill, in the order a course asks for them
DRILL_FIELDS = (
    "run_id",
    "symptom",
    "first_check",
    "likely_cause",
    "fix_attempt",
    "result_after_fix",
)


def finding_markdown(i: int, run_id: str, f: dict[str, Any]) -> list[str]:
    """drill.md's section for one finding (a dict as in drill.json): the six fields, the causes."""
    where = f" in `{f['module'] or '(model)'}`" if f["module"] is not None else ""
    when = f" at step {f['step']}" if f["step"] is not None else ""
    result = f["result_after_fix"]
    if isinstance(result, dict):
        result = result.get("summary") or json.dumps(result)
    values = {
        "run_id": f"`{run_id}`",
        "symptom": f"`{f['symptom']}`",
        "first_check": f["first_check"],
        "likely_cause": f"`{f['likely_cause']}`",
        "fix_attempt": f["fix_attempt"],
        "result_after_fix": result
        or "_not yet: rerun with the fix, then `trainlens compare THIS_RUN_DIR FIXED_RUN_DIR`_",
    }
    out = [f"### {i}. {f['symptom']} ({f['severity']}){where}{when}", ""]
    out += [f"- **{k}:** {one_paragraph(values[k])}" for k in DRILL_FIELDS]
    out += ["", "Likely causes, most likely first:", ""]
    for n, c in enumerate(f["likely_causes"], 1):
        out.append(f"{n}. `{c['id']}` (confidence {c['confidence']:.2f}): {c['evidence']}")
    out.append("")
    return out


def one_paragraph(text: str) -> str:
    return " ".join(str(text).split())
