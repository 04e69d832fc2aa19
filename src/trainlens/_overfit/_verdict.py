"""The verdict of an overfit run: the result object, and one text for terminal and drill.

`verdict_lines` is the one renderer: `OverfitResult.verdict` (what `summary()` and the CLI
print) is its lines joined, and the drill.md section "Overfit one batch" is the same lines
as Markdown, so the two never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._finding import Finding, _jsonable
from .._format import num
from .._hookspecs import hookimpl
from ._criterion import MAX_STEPS, memorised, target, trend, trend_window

PROVES = (
    "the model, the loss and the optimizer are wired so that gradients can drive the "
    "loss down on real data"
)
DOES_NOT_PROVE = (
    "that the model generalises, that the data pipeline (loading, augmentation, "
    "labels of the full dataset) is right, or that the validation split is sound"
)
SECTION_TITLE = "Overfit one batch"


@dataclass
class OverfitResult:
    """The verdict of `overfit_one_batch`: passed or not, the losses, the drill's findings."""

    passed: bool
    losses: list[float]
    findings: list[Finding]
    run_dir: Path
    drill: dict[str, Any]
    verdict: str
    criterion: str
    kind: str
    steps: int
    optimizer: str
    initial_loss: dict[str, Any] | None = None
    batch_dependency: dict[str, Any] | None = None
    accuracy: float | None = None
    memorised: bool = False
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """The verdict and, on failure, each finding's symptom, likely cause and first check."""
        lines = [self.verdict]
        for f in self.findings:
            where = f" in `{f.module}`" if f.module else ""
            lines.append(
                f"- {f.severity}: {f.symptom}{where}: likely cause {f.likely_cause} "
                f"({f.top.evidence})"
            )
            lines.append(f"  first check: {' '.join(f.first_check.split())}")
        lines.append(f"drill: {self.run_dir / 'drill.md'}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "verdict": self.verdict,
            "criterion": self.criterion,
            "kind": self.kind,
            "memorised": self.memorised,
            "steps": self.steps,
            "trend": self.details.get("trend"),
            "optimizer": self.optimizer,
            "losses": _jsonable(self.losses),  # NaN/Inf as text: JSON has neither
            "accuracy": self.accuracy,
            "initial_loss": self.initial_loss,
            "batch_dependency": self.batch_dependency,
            "error": self.error,
            "run_dir": str(self.run_dir),
            "drill": self.drill,
        }


@dataclass
class RunFacts:
    """What the overfit run knows besides the records, for its verdict."""

    kind: str
    baseline: float | None
    optimizer: str
    batch_size: int | None
    losses: list[float]
    adaptive: bool = False  # the step budget grows while the loss still falls clearly
    accuracy: float | None = None


def initial_loss_check(
    info: dict[str, Any] | None, findings: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The init-loss check as evidence: the value, what a uniform guess gives, the verdict.

    Far off or not is the rule's call (`bad_initial_loss`, thresholds in the recipe).
    """
    if not info:
        return None
    from .._rules._initial_loss import binary_targets_off, expected_initial_loss

    flagged = any(
        c["id"] == "bad_initial_loss" for f in findings for c in f.get("likely_causes", [])
    )
    expected = expected_initial_loss(info)
    out = dict(info)
    out["expected"] = expected
    out["ok"] = None if expected is None else not flagged
    # a binary loss's targets outside [0, 1] are the reason whatever the first loss shows
    out["verdict"] = (
        None
        if not flagged
        else "targets"
        if binary_targets_off(info)
        else "negative"
        if info["value"] < 0
        else "high"
    )
    return out


def _targets(init: dict[str, Any]) -> str:
    r = init.get("target_range") or ["?", "?"]
    return f"[{_g(r[0])}, {_g(r[1])}]"


# --- the one renderer ------------------------------------------------------------------
def verdict_lines(r: OverfitResult) -> list[str]:
    """The verdict: a PASSED/FAILED head line, then the evidence and what it means."""
    n = r.details.get("batch_size")
    of = f" of {n}" if n else ""
    losses = r.losses
    if r.passed:
        head = f"PASSED: the batch{of} was memorised in {r.steps} steps"
    elif r.error is not None:
        head = f"FAILED: training crashed at step {len(losses)}: {r.error.splitlines()[0][:200]}"
    elif r.memorised and r.initial_loss and r.initial_loss.get("ok") is False:
        init = r.initial_loss
        if init.get("verdict") == "targets":
            head = (
                f"FAILED: the batch{of} was memorised, but its targets range over "
                f"{_targets(init)}: {init['loss']} takes targets in [0, 1]"
            )
        else:
            head = (
                f"FAILED: the batch{of} was memorised, but the loss at initialisation, "
                f"{_g(init['value'])}, is far from the ln({init['classes']}) = "
                f"{_g(init['expected'])} of an untrained model"
            )
    elif r.memorised:
        head = "FAILED: the loss went down, but the drill found errors"
    else:
        head = f"FAILED: the batch{of} was not memorised in {r.steps} steps"
    lines = [head]
    if losses:
        acc = f", batch accuracy {r.accuracy:.0%}" if r.accuracy is not None else ""
        lines.append(f"loss {_g(losses[0])} -> {_g(losses[-1])}{acc}: {trajectory(losses)}")
    lines.append(f"criterion: {r.criterion}")
    trend_text = _trend_line(r)
    if trend_text:
        lines.append(trend_text)
    init = r.initial_loss
    if init and init.get("expected") is not None:
        state = "ok" if init["ok"] else f"far off ({init['verdict']})"
        if init.get("verdict") == "targets":
            state = f"its targets range over {_targets(init)}, outside [0, 1]"
        lines.append(
            f"initial loss {_g(init['value'])}, a uniform guess over {init['classes']} classes "
            f"gives ln({init['classes']}) = {_g(init['expected'])}: {state}"
        )
    dep = r.batch_dependency
    if dep:
        if dep.get("mixed"):
            lines.append(
                f"batch dependency: samples MIX (output of sample {dep['sample']} has gradient "
                f"{_g(dep['grad_other'])} w.r.t. sample {dep['other']}'s input)"
            )
        elif dep.get("checked"):
            lines.append(
                "batch dependency: ok, no sample's output depends on another sample's input"
            )
        else:
            lines.append(f"batch dependency: not checked ({dep.get('skipped')})")
    lines.append(f"optimizer: {r.optimizer}")
    if not r.passed and r.error is None:
        lines.extend(_why_not_memorised(r))
    if r.passed:
        lines.append(f"A pass proves {PROVES}.")
        lines.append(f"It does not prove {DOES_NOT_PROVE}.")
    else:
        lines.append(
            "The model should be able to memorise one small batch; until it does, training "
            "on the full data cannot work."
            + (" Start with the first check below." if r.findings else "")
        )
    return lines


def verdict_markdown(r: OverfitResult) -> str:
    """The same lines for drill.md: the head in bold, the rest a list."""
    head, *rest = verdict_lines(r)
    return "\n".join([f"**{head}**", "", *(f"- {line}" for line in rest)])


def _trend_line(r: OverfitResult) -> str | None:
    """Not memorised: was the loss still falling (more steps or a higher lr) or stalled?"""
    if r.memorised or r.error is not None or len(r.losses) < 2:
        return None
    state = r.details.get("trend")
    recent = r.losses[-2 * trend_window(len(r.losses)) :]
    init = r.initial_loss or {}
    if state == "improving" and init.get("verdict") in ("targets", "negative") and recent[-1] < 0:
        # falling below zero: a cross-entropy on valid inputs and targets cannot, so more
        # steps only push it further down
        return (
            f"falling below zero: the loss went from {_g(recent[0])} to {_g(recent[-1])} over "
            f"the last {len(recent)} steps, which {init.get('loss', 'the loss')} cannot do on "
            "valid inputs and targets: more steps will not help; see the findings below."
        )
    if state == "improving":
        more = (
            "" if not r.details.get("adaptive") else f" (the automatic budget stops at {MAX_STEPS})"
        )
        return (
            f"still improving: the loss fell from {_g(recent[0])} to {_g(recent[-1])} over the "
            f"last {len(recent)} steps{more}. Give it more steps (steps={2 * r.steps}) or a "
            "higher learning rate (3-10x); if it then memorises, the model is fine."
        )
    if state == "stalled":
        return (
            f"stalled: over the last {len(recent)} steps the loss only went from "
            f"{_g(recent[0])} to {_g(recent[-1])}; at that pace it would need more than "
            f"{MAX_STEPS} steps to be memorised: more steps alone will not help; see the "
            "findings below."
        )
    return None


def _why_not_memorised(r: OverfitResult) -> list[str]:
    """The ranked causes the drill found; when none, what was ruled out and what to print."""
    causes = sorted((c for f in r.findings for c in f.likely_causes), key=lambda c: -c.confidence)
    if causes:
        seen: dict[str, float] = {}
        for c in causes:
            seen.setdefault(c.id, c.confidence)
        ranked = ", ".join(f"{cid} ({conf:.2f})" for cid, conf in list(seen.items())[:5])
        return [f"likely causes, most likely first: {ranked}"]
    if r.memorised:
        return []
    from .._rules.direct_evidence import overfit_next, overfit_ruled_out

    return [
        "no recorded evidence explains it; ruled out: " + "; ".join(overfit_ruled_out()),
        f"print next: {overfit_next()}",
    ]


def trajectory(losses: list[float], points: int = 8) -> str:
    """`loss@step` at a few evenly spread steps, first and last included."""
    if len(losses) <= points:
        picked = list(range(len(losses)))
    else:
        picked = sorted({round(i * (len(losses) - 1) / (points - 1)) for i in range(points)})
    return " ".join(f"{_g(losses[i])}@{i + 1}" for i in picked)


def _g(x: float) -> str:
    return num(float(x))


# --- the run's plugin: the verdict into drill.json and drill.md --------------------------
class VerdictPlugin:
    """A plugin for this run only: decides the verdict on the findings just made, as the
    drill's `overfit` field and its "Overfit one batch" section."""

    def __init__(self, run: RunFacts) -> None:
        self.run = run
        self.result: OverfitResult | None = None
        self.lens: Any = None

    @hookimpl
    def trainlens_drill_fields(self, drill: dict[str, Any], records: Any) -> dict[str, Any]:
        exc = records.meta.get("exception")
        ended = records.meta.get("ended") or {}
        error = None
        if exc and ended.get("how", "raised") == "raised":
            error = f"{exc.get('type')}: {exc.get('message')}"[:500]
        self.result = self.verdict(drill, records.meta, error)
        return {"overfit": {k: v for k, v in self.result.to_json().items() if k != "drill"}}

    @hookimpl
    def trainlens_report_sections(self, drill: dict[str, Any], records: Any) -> list[Any]:
        if self.result is None:
            return []
        return [(SECTION_TITLE, verdict_markdown(self.result))]

    def verdict(
        self, drill: dict[str, Any], meta: dict[str, Any], error: BaseException | str | None
    ) -> OverfitResult:
        run = self.run
        losses, accuracy, kind, baseline = run.losses, run.accuracy, run.kind, run.baseline
        done, criterion = memorised(kind, losses, accuracy, baseline)
        if error is not None:
            done = False
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"[:500]
        findings = drill.get("findings", [])
        errors = [f for f in findings if f.get("severity") == "error"]
        init = initial_loss_check(meta.get("initial_loss"), findings)
        init_ok = init is None or init["ok"] is not False
        result = OverfitResult(
            passed=done and init_ok and not errors and error is None,
            losses=losses,
            findings=[Finding.from_dict(f) for f in findings],
            run_dir=Path(self.lens.run_dir) if self.lens is not None else Path("."),
            drill=drill,
            verdict="",
            criterion=criterion,
            kind=kind,
            steps=len(losses),
            optimizer=run.optimizer,
            initial_loss=init,
            batch_dependency=meta.get("batch_dependency"),
            accuracy=accuracy,
            memorised=done,
            error=error,
            details={
                "baseline": baseline,
                "batch_size": run.batch_size,
                "trend": trend(losses, target(kind, losses, baseline)),
                "adaptive": run.adaptive,
            },
        )
        result.verdict = "\n".join(verdict_lines(result))
        return result
