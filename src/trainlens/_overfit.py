"""Overfit one batch: the first sanity check of a new model, with a diagnosis when it fails.

If a model cannot memorise 16 examples, no amount of training will fix it. This trains a
copy of the model on one batch under `trainlens.watch` (the same probes and rules), and
decides whether the batch was memorised.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.loss import _Loss

from ._errors import TrainlensError, UsageError
from ._finding import Finding
from ._hookspecs import hookimpl
from ._probes._batchdep import batch_size_hint
from ._probes._state import suspended

DEFAULT_STEPS = 200
DEFAULT_LR = 1e-3

#: classification: memorised when the final loss is below this (nats)...
CLASSIFICATION_LOSS_TARGET = 0.05
#: ...or every sample is right and the loss fell below this fraction of its start
#: (label smoothing keeps a memorised batch's loss above zero)
CLASSIFICATION_DROP = 0.5
#: regression: memorised when the final loss is below this fraction of the loss of the
#: best constant prediction (the target mean: the target variance for MSE)
REGRESSION_FRACTION = 0.02

PROVES = (
    "the model, the loss and the optimizer are wired so that gradients can drive the "
    "loss down on real data"
)
DOES_NOT_PROVE = (
    "that the model generalises, that the data pipeline (loading, augmentation, "
    "labels of the full dataset) is right, or that the validation split is sound"
)

#: losses whose batch is memorised when every sample is classified right
_CLASSIFICATION_LOSSES: tuple[Any, ...] = (
    nn.CrossEntropyLoss,
    nn.NLLLoss,
    nn.BCEWithLogitsLoss,
    nn.BCELoss,
    F.cross_entropy,
    F.nll_loss,
    F.binary_cross_entropy_with_logits,
    F.binary_cross_entropy,
)


@dataclass
class Setup:
    """What an overfit-one-batch factory returns: the model, one batch, the loss.

    `batch` is `(inputs, targets)`; `inputs` may be a tensor, a tuple of positional
    arguments or a dict of keyword arguments for the model. Without an `optimizer`,
    Adam at lr 1e-3 is used.
    """

    model: nn.Module
    batch: tuple[Any, Any]
    loss_fn: Callable[..., torch.Tensor]
    optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def coerce(cls, value: Any, where: str = "the setup") -> Setup:
        """A `Setup`, or a dict with its keys, checked; `UsageError` says what is wrong."""
        if isinstance(value, Setup):
            setup = value
        elif isinstance(value, Mapping):
            keys = {f.name for f in dataclasses.fields(cls)}
            missing = {"model", "batch", "loss_fn"} - value.keys()
            unknown = set(value) - keys
            if missing or unknown:
                bits = []
                if missing:
                    bits.append(f"missing {sorted(missing)}")
                if unknown:
                    bits.append(f"unknown {sorted(map(str, unknown))}")
                raise UsageError(
                    f"{where} is a dict with {', '.join(bits)} keys; it needs model, batch, "
                    "loss_fn (and optionally optimizer)"
                )
            setup = cls(**value)
        else:
            raise UsageError(
                f"{where} is a {type(value).__name__}; return trainlens.Setup(model=..., "
                "batch=(inputs, targets), loss_fn=...) or a dict with those keys"
            )
        setup.check(where)
        return setup

    def check(self, where: str = "the setup") -> None:
        if not isinstance(self.model, nn.Module):
            raise UsageError(
                f"model in {where} must be a torch.nn.Module, got {type(self.model).__name__}"
            )
        batch = self.batch
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            got = (
                f"a {len(batch)}-item {type(batch).__name__}"
                if isinstance(batch, (tuple, list))
                else f"a {type(batch).__name__}"
            )
            raise UsageError(f"batch in {where} must be a pair (inputs, targets), got {got}")
        if not callable(self.loss_fn):
            raise UsageError(
                f"loss_fn in {where} must be callable, e.g. nn.CrossEntropyLoss(), got "
                f"{type(self.loss_fn).__name__}"
            )
        if self.optimizer is not None and not isinstance(self.optimizer, torch.optim.Optimizer):
            raise UsageError(
                f"optimizer in {where} must be a torch.optim.Optimizer or None, got "
                f"{type(self.optimizer).__name__}"
            )


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
            "optimizer": self.optimizer,
            "losses": [_json_float(v) for v in self.losses],
            "accuracy": self.accuracy,
            "initial_loss": self.initial_loss,
            "batch_dependency": self.batch_dependency,
            "error": self.error,
            "run_dir": str(self.run_dir),
            "drill": self.drill,
        }


def overfit_one_batch(
    model: nn.Module,
    batch: tuple[Any, Any],
    loss_fn: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    steps: int = DEFAULT_STEPS,
    lr: float | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    quiet: bool = True,
    progress: Callable[[int, float], None] | None = None,
) -> OverfitResult:
    """Train on one batch until it is memorised, and say why not when it is not.

    The caller's model and optimizer are left unchanged: a deep copy of both is trained
    (the batch's tensors are not modified either). Runs under `trainlens.watch`, so the
    run directory holds the usual drill; before training the loss at initialisation is
    checked (near ln(classes) for classification) and the batch-dependency probe runs.

    Passed means memorised, a sane loss at initialisation (within 3x and 1 nat of ln(C),
    not negative) and no `error` finding. Memorised means:
      - classification (CrossEntropy/NLL/BCE losses): the final loss is below 0.05, or
        every sample of the batch is classified right (eval mode) and the loss fell
        below half its initial value;
      - anything else (regression): the final loss is below 2% of the loss of the best
        constant prediction (the target mean; for MSE that is the target variance), or
        below 2% of the initial loss for losses trainlens cannot evaluate that way.

    Without `optimizer`, Adam at `lr` (default 1e-3) is used; with one, `lr` (if given)
    overrides its learning rate. `steps` is the most steps trained; training stops early
    once the loss criterion is met. `quiet=False` shows a live progress bar on stderr;
    `progress(step, loss)` is called after each step.
    """
    from ._watch import watch

    setup = Setup(model, batch, loss_fn, optimizer)
    setup.check("overfit_one_batch")
    steps = _positive_int(steps, "steps")
    if lr is not None and (
        isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or math.isinf(lr)
    ):
        raise UsageError(f"lr must be a positive number, got {lr!r}")
    try:
        model_c, opt_c = copy.deepcopy((model, optimizer))
    except Exception as err:
        raise UsageError(
            f"overfit_one_batch trains a copy of the model, and copy.deepcopy failed on it "
            f"({type(err).__name__}: {err}); make the model deep-copyable"
        ) from err
    if opt_c is None:
        opt_c = torch.optim.Adam(model_c.parameters(), lr=lr if lr is not None else DEFAULT_LR)
        opt_desc = f"Adam(lr={_g(opt_c.param_groups[0]['lr'])}) (default: no optimizer was given)"
    else:
        if lr is not None:
            for group in opt_c.param_groups:
                group["lr"] = lr
        opt_desc = f"{type(opt_c).__name__}(lr={_g(opt_c.param_groups[0].get('lr', math.nan))})"
    if not any(p.requires_grad for p in model_c.parameters()):
        raise UsageError("the model has no trainable parameters: nothing to overfit")

    inputs, targets = _clone(batch[0]), _clone(batch[1])
    kind = _loss_kind(loss_fn)
    baseline = _baseline(loss_fn, targets) if kind == "regression" else None
    captured = isinstance(loss_fn, _Loss)  # nn losses are recorded by watch itself
    section = _Section()
    losses: list[float] = []
    # what the verdict needs, handed to the run before it is written (drill["overfit"])
    section.run = _RunFacts(kind, baseline, opt_desc, _batch_size(targets), losses)
    error: BaseException | None = None
    accuracy: float | None = None
    lens = watch(model_c, opt_c, run_dir=run_dir, quiet=True, plugins=[section])
    section.lens = lens
    bar = _Progress(steps) if not quiet else None
    try:
        with batch_size_hint(_batch_size(targets)), lens:
            model_c.train()
            for step in range(steps):
                loss = loss_fn(_call(model_c, inputs), targets)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise UsageError(
                        f"loss_fn must return a scalar tensor, got "
                        f"{type(loss).__name__}{list(getattr(loss, 'shape', []))}"
                    )
                if not captured:
                    lens.log_loss(loss)
                opt_c.zero_grad(set_to_none=True)
                loss.backward()
                opt_c.step()
                value = float(loss.detach())
                losses.append(value)
                if bar is not None:
                    bar.update(step + 1, value)
                if progress is not None:
                    progress(step + 1, value)
                if not math.isfinite(value):
                    break
                if _loss_target_met(kind, value, losses[0], baseline):
                    break
            accuracy = _accuracy(model_c, inputs, targets, kind)
            section.run.accuracy = accuracy
            section.facts = _facts(kind, losses, accuracy, baseline)
            # the rules read the verdict so far: a batch that was not memorised is a
            # failure to explain even when the loss curve shows no symptom of its own
            memorised_so_far, _ = _memorised(kind, losses, accuracy, baseline)
            lens.note(
                "overfit",
                {
                    "memorised": memorised_so_far,
                    "kind": kind,
                    "steps": len(losses),
                    "max_steps": steps,
                    "baseline": baseline,
                },
            )
    except TrainlensError:
        raise
    except Exception as err:  # the model's own crash: the drill names it, we report it
        error = err
    finally:
        if bar is not None:
            bar.close()
    result = section.result
    if result is None:  # the run could not be written: the verdict all the same
        meta = lens.records.meta if lens.records is not None else {}
        result = section.verdict(lens.drill or {}, meta, error)
    result.findings, result.run_dir = list(lens.findings), lens.run_dir
    result.drill = lens.drill or {}
    return result


@dataclass
class _RunFacts:
    """What the overfit run knows besides the records, for its verdict."""

    kind: str
    baseline: float | None
    optimizer: str
    batch_size: int | None
    losses: list[float]
    accuracy: float | None = None


# --- the criterion ---------------------------------------------------------------------
def _loss_kind(loss_fn: Any) -> str:
    for key in _CLASSIFICATION_LOSSES:
        if loss_fn is key or (isinstance(key, type) and isinstance(loss_fn, key)):
            return "classification"
    return "regression"


def _baseline(loss_fn: Any, targets: Any) -> float | None:
    """The loss of the best constant guess (the target mean), when the loss can say it."""
    if not isinstance(targets, torch.Tensor) or not targets.is_floating_point():
        return None
    try:
        with torch.no_grad(), suspended():
            guess = torch.full_like(targets, float(targets.float().mean()))
            value = float(loss_fn(guess, targets))
    except Exception:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _loss_target_met(kind: str, value: float, first: float, baseline: float | None) -> bool:
    if kind == "classification":
        return 0 <= value < CLASSIFICATION_LOSS_TARGET
    reference = baseline if baseline is not None else first
    return abs(value) <= REGRESSION_FRACTION * abs(reference) or value == 0


def _memorised(
    kind: str, losses: list[float], accuracy: float | None, baseline: float | None
) -> tuple[bool, str]:
    if not losses:
        return False, "no training step completed"
    first, last = losses[0], losses[-1]
    if kind == "classification":
        text = (
            f"classification: final loss < {CLASSIFICATION_LOSS_TARGET}, or 100% batch "
            f"accuracy with the loss below {CLASSIFICATION_DROP:.0%} of its start"
        )
        ok = math.isfinite(last) and (
            0 <= last < CLASSIFICATION_LOSS_TARGET
            or (accuracy == 1.0 and 0 <= last < CLASSIFICATION_DROP * first)
        )
        return ok, text
    if baseline is not None:
        text = (
            f"regression: final loss <= {REGRESSION_FRACTION:.0%} of the loss of predicting "
            f"the target mean ({_g(baseline)})"
        )
        reference = baseline
    else:
        text = f"final loss <= {REGRESSION_FRACTION:.0%} of the initial loss ({_g(first)})"
        reference = first
    ok = math.isfinite(last) and (abs(last) <= REGRESSION_FRACTION * abs(reference) or last == 0)
    return ok, text


def _accuracy(model: nn.Module, inputs: Any, targets: Any, kind: str) -> float | None:
    """Share of the batch classified right, in eval mode, unseen by the probes."""
    if kind != "classification" or not isinstance(targets, torch.Tensor):
        return None
    flags = [(m, m.training) for m in model.modules()]
    try:
        with torch.no_grad(), suspended(), torch.random.fork_rng(devices=[]):
            model.eval()
            out = _call(model, inputs)
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                return None
            if targets.is_floating_point() and out.shape == targets.shape:
                if (
                    out.dim() >= 2
                    and targets.dim() >= 2
                    and targets.sum(1).allclose(torch.ones((), device=targets.device))
                ):
                    right = out.argmax(1) == targets.argmax(1)  # class probabilities
                else:
                    threshold = 0.0 if out.min() < 0 or out.max() > 1 else 0.5  # logits/probs
                    right = (out > threshold) == (targets > 0.5)
            elif not targets.is_floating_point() and out.dim() >= 1:
                cls_dim = 1 if out.dim() >= 2 else 0
                right = out.argmax(cls_dim) == targets
            else:
                return None
            return float(right.float().mean())
    except Exception:
        return None
    finally:
        for m, training in flags:
            m.training = training


def _facts(
    kind: str, losses: list[float], accuracy: float | None, baseline: float | None
) -> dict[str, Any]:
    memorised, criterion = _memorised(kind, losses, accuracy, baseline)
    return {
        "memorised": memorised,
        "criterion": criterion,
        "losses": losses,
        "accuracy": accuracy,
    }


def _initial_loss_check(
    info: dict[str, Any] | None, findings: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The init-loss check as evidence: the value, what a uniform guess gives, the verdict.

    Far off or not is the rule's call (`bad_initial_loss`, thresholds in the recipe).
    """
    if not info:
        return None
    from ._rules._initial_loss import expected_initial_loss

    flagged = any(
        c["id"] == "bad_initial_loss" for f in findings for c in f.get("likely_causes", [])
    )
    expected = expected_initial_loss(info)
    out = dict(info)
    out["expected"] = expected
    out["ok"] = None if expected is None else not flagged
    out["verdict"] = None if not flagged else "negative" if info["value"] < 0 else "high"
    return out


# --- the verdict ---------------------------------------------------------------------------
def _verdict(r: OverfitResult) -> str:
    n = r.details.get("batch_size")
    of = f" of {n}" if n else ""
    losses = r.losses
    if r.passed:
        head = f"PASSED: the batch{of} was memorised in {r.steps} steps"
    elif r.error is not None:
        head = f"FAILED: training crashed at step {len(losses)}: {r.error.splitlines()[0][:200]}"
    elif r.memorised and r.initial_loss and r.initial_loss.get("ok") is False:
        init = r.initial_loss
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
        lines.append(f"loss {_g(losses[0])} -> {_g(losses[-1])}{acc}: {_trajectory(losses)}")
    lines.append(f"criterion: {r.criterion}")
    init = r.initial_loss
    if init and init.get("expected") is not None:
        state = "ok" if init["ok"] else f"far off ({init['verdict']})"
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
    return "\n".join(lines)


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
    from ._rules.direct_evidence import OVERFIT_NEXT, overfit_ruled_out

    return [
        "no recorded evidence explains it; ruled out: " + "; ".join(overfit_ruled_out()),
        f"print next: {OVERFIT_NEXT}",
    ]


def _trajectory(losses: list[float], points: int = 8) -> str:
    if len(losses) <= points:
        picked = list(range(len(losses)))
    else:
        picked = sorted({round(i * (len(losses) - 1) / (points - 1)) for i in range(points)})
    return " ".join(f"{_g(losses[i])}@{i + 1}" for i in picked)


# --- the drill section ---------------------------------------------------------------------
class _Section:
    """A report plugin for this run only: the overfit facts as a drill.md section."""

    def __init__(self) -> None:
        self.facts: dict[str, Any] | None = None
        self.run: _RunFacts | None = None
        self.result: OverfitResult | None = None
        self.lens: Any = None

    @hookimpl
    def trainlens_drill_fields(self, drill: dict[str, Any], records: Any) -> dict[str, Any]:
        """The verdict, decided on the findings just made, as the drill's `overfit` field."""
        exc = records.meta.get("exception")
        ended = records.meta.get("ended") or {}
        error = None
        if exc and ended.get("how", "raised") == "raised":
            error = f"{exc.get('type')}: {exc.get('message')}"[:500]
        self.result = self.verdict(drill, records.meta, error)
        return {"overfit": {k: v for k, v in self.result.to_json().items() if k != "drill"}}

    def verdict(
        self, drill: dict[str, Any], meta: dict[str, Any], error: BaseException | str | None
    ) -> OverfitResult:
        run = self.run
        assert run is not None
        losses, accuracy, kind, baseline = run.losses, run.accuracy, run.kind, run.baseline
        memorised, criterion = _memorised(kind, losses, accuracy, baseline)
        if error is not None:
            memorised = False
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"[:500]
        findings = drill.get("findings", [])
        errors = [f for f in findings if f.get("severity") == "error"]
        init = _initial_loss_check(meta.get("initial_loss"), findings)
        init_ok = init is None or init["ok"] is not False
        passed = memorised and init_ok and not errors and error is None
        result = OverfitResult(
            passed=passed,
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
            memorised=memorised,
            error=error,
            details={"baseline": baseline, "batch_size": run.batch_size},
        )
        result.verdict = _verdict(result)
        return result

    @hookimpl
    def trainlens_report_sections(self, drill: dict[str, Any], records: Any) -> list[Any]:
        facts = self.facts
        lines = []
        if facts is not None:
            losses = facts["losses"]
            verdict = "memorised" if facts["memorised"] else "NOT memorised"
            lines.append(
                f"The batch was **{verdict}** in {len(losses)} steps (criterion: "
                f"{facts['criterion']})."
            )
            if losses:
                lines.append("")
                lines.append(f"Loss: {_trajectory(losses)}.")
            if facts["accuracy"] is not None:
                lines.append(f"Batch accuracy after training: {facts['accuracy']:.0%}.")
        init = _initial_loss_check(records.meta.get("initial_loss"), drill["findings"])
        if init is not None and init.get("expected") is not None:
            lines.append("")
            lines.append(
                f"Loss at initialisation: {_g(init['value'])} ({init['loss']}); a uniform guess "
                f"over {init['classes']} classes gives {_g(init['expected'])}: "
                + ("ok." if init["ok"] else f"far off ({init['verdict']}).")
            )
        dep = records.meta.get("batch_dependency")
        if dep:
            lines.append("")
            if dep.get("mixed"):
                lines.append(
                    f"Batch dependency: samples mix (max leak {_g(dep['max_leak'])} of a "
                    "sample's own gradient)."
                )
            elif dep.get("checked"):
                lines.append(
                    f"Batch dependency: none; the gradient of a sample's output w.r.t. the "
                    f"other samples' inputs is {_g(dep.get('max_leak', 0.0))} of its own."
                )
            else:
                lines.append(f"Batch dependency: not checked ({dep.get('skipped')}).")
        lines.append("")
        lines.append(f"A pass proves {PROVES}; it does not prove {DOES_NOT_PROVE}.")
        return [("Overfit one batch", "\n".join(lines))]


# --- live progress -------------------------------------------------------------------------
class _Progress:
    """A rich progress bar with the current loss, on stderr (stdout stays for results)."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        console = Console(stderr=True)
        # a live bar in Jupyter needs ipywidgets and warns without it: one line at the end
        self._notebook: tuple[Console, int, float] | None = None
        if console.is_jupyter:
            self._notebook = (console, 0, math.nan)
            return
        self._progress = Progress(
            TextColumn("overfitting one batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task("overfit", total=total, loss="-")
        self._progress.start()

    def update(self, step: int, loss: float) -> None:
        if self._notebook is not None:
            self._notebook = (self._notebook[0], step, loss)
            return
        self._progress.update(self._task, completed=step, loss=_g(loss))

    def close(self) -> None:
        if self._notebook is not None:
            console, step, loss = self._notebook
            console.print(f"overfitting one batch: {step} steps, loss {_g(loss)}", markup=False)
            return
        self._progress.stop()


# --- small helpers -------------------------------------------------------------------------
def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _clone(value: Any) -> Any:
    """The batch as the caller gave it, safe from in-place edits in the model."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(_clone(v) for v in value)
    if isinstance(value, list):
        return [_clone(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _batch_size(targets: Any) -> int | None:
    if isinstance(targets, torch.Tensor) and targets.dim() >= 1:
        return int(targets.shape[0])
    return None


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return value


def _g(x: float) -> str:
    from ._format import num

    return num(float(x))


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)
