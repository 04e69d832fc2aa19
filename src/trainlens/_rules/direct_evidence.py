"""Direct evidence: records that show a bug on their own, whatever the loss curve does.

Gradients carried over from earlier steps (`zero_grad` missing), probabilities fed to a
loss that expects logits, parameters the forward uses that never get a gradient, gradients
cleared between `backward()` and `step()`, a learning rate that collapsed before the
loss ever fell, and units of a layer that started equal and never parted. The symptom
rules read most of these only once their trigger fires; here they are read on every run
(issue 18 §6, §7), and on every overfit-one-batch run that did not memorise its batch
(§5):

- the run shows a symptom (it diverges, turns non-finite, stays flat, or overfit could not
  memorise its batch): the evidence becomes a cause of *that* symptom, ranked above its
  generic causes, and its fix is the fix of the bug (never "clip the gradients" for
  gradients that pile up because `zero_grad` is missing);
- the run looks fine: a warning under the symptom family the cause belongs to.

Causes keep their catalogue ids and texts; loop-order variants take their texts from
`recipes/direct_evidence/loop_order.toml`, and the words of an overfit verdict nothing
explains from `recipes/direct_evidence/overfit.toml`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from .._catalogue import Catalogue
from .._finding import Cause, Finding
from .._hookspecs import hookimpl
from .._records import Records
from . import flat_loss
from ._common import exception_info, num
from ._variants import HOME, unregistered_layers
from ._variants import text as _text
from ._variants import texts as _texts
from ._variants import variant as _variant

#: a cross-symptom rule: it files its causes under the symptom the run shows, so it owns no
#: recipe of its own and borrows these causes from the symptoms' recipes
SYMPTOM = None
CAUSES: frozenset[str] = frozenset()
BORROWS = frozenset(
    {
        "optimizer_rebuilt",
        "zero_grad_missing",
        "softmax_before_loss",
        "no_gradient_flow",
        "optimizer_not_stepping",
        "lr_too_low",
        "params_not_in_optimizer",
        "symmetric_init",
    }
)

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass

#: direct evidence outranks the generic causes of whatever symptom the run shows
#: (divergence causes top out at 0.85)
RANK = {
    "optimizer_rebuilt": 0.98,
    "grads_cleared_before_step": 0.97,
    "lr_collapsed": 0.96,
    "zero_grad_missing": 0.95,
    "softmax_before_loss": 0.93,
}
#: parameters without gradient warn on a run that looks fine only from this share of the
#: trainable elements (an unused pooler of a pretrained encoder is ~1% and harmless)
NO_GRAD_WARN_SHARE = 0.1


@hookimpl
def trainlens_diagnose(records: Records, catalogue: Catalogue) -> list[Finding]:
    if HOME not in catalogue:
        return []
    exc = exception_info(records)
    if exc is not None and exc.get("type") != "KeyboardInterrupt":
        return []  # a crash is its own finding
    shown = symptom_shown(records, catalogue)
    view = _View(records, catalogue)
    causes = direct_causes(view, shown)
    overfit_failed = _overfit_failed(records)
    if overfit_failed and shown in (None, HOME):
        shown = HOME
        causes = _merge(causes, overfit_causes(view))
    if not causes:
        return []
    symptom = shown or HOME
    if shown is None:
        severity = "warning"  # the run looks fine: say what was seen, do not alarm
    elif shown == HOME and overfit_failed and max(c.confidence for c in causes) < 0.7:
        severity = "warning"
    else:
        severity = "error"
    evidence: dict[str, Any] = {"direct_evidence": [c.id for c in causes]}
    if shown is None:
        evidence["symptom_shown"] = None
    return [catalogue.finding(symptom, severity, causes, evidence=evidence)]


# --- which symptom does the run show? ---------------------------------------------------
def symptom_shown(records: Records, catalogue: Catalogue) -> str | None:
    """`non_finite`, `diverging`, `flat_loss` (the curve's own triggers) or None."""
    from . import diverging, non_finite

    loss = records.train_loss()
    if len(loss) and not np.isfinite(loss.to_numpy(dtype=float)).all():
        # stale gradients explain a NaN at the end of a blow-up, not one from the data or
        # a log(0): those keep their own cause, and the evidence here its own warning
        found = _quiet(lambda: non_finite.trainlens_diagnose(records, catalogue)) or []
        blown = any(f.likely_cause in ("lr_too_high", "exploding_gradient") for f in found)
        return "non_finite" if blown else None

    rising = (
        _quiet(lambda: diverging.trainlens_diagnose(records, catalogue)) or []
        if "diverging" in catalogue
        else []
    )
    flat = _quiet(lambda: flat_loss._flatness(records, catalogue)) is not None
    # a loss that swings around a level it never leaves is flat; one that blew up is not
    if rising and (rising[0].severity == "error" or not flat):
        return "diverging"
    return HOME if flat else None


def _quiet(fn: Callable[[], Any]) -> Any:
    """Another rule's trigger, read-only; if it fails, that rule reports it itself."""
    try:
        return fn()
    except Exception:
        return None


def _overfit_failed(records: Records) -> bool:
    info = records.meta.get("overfit")
    return isinstance(info, dict) and info.get("memorised") is False


# --- the direct evidence ----------------------------------------------------------------
def direct_causes(view: _View, shown: str | None) -> list[Cause]:
    records, catalogue = view.records, view.catalogue
    causes: list[Cause] = []
    cleared = grads_cleared_before_step(records, catalogue)
    for cause in (
        rebuilt_optimizer(view),
        cleared,
        lr_collapsed(records, catalogue),
        carried_gradients(view),
        probabilities_into_logits_loss(view, shown),
    ):
        if cause is not None:
            causes.append(cause)
    if cleared is None and shown not in ("diverging", "non_finite"):
        # a part without gradient explains a model that does not learn, not a blow-up
        no_grad = params_without_gradient(view, warn_only=shown is None)
        if no_grad is not None:
            causes.append(no_grad)
        outside = unregistered_layers(records, catalogue) or params_outside_optimizer(view)
        if outside is not None:
            causes.append(outside)
        # units that started equal never part: the layer is one unit wide, whatever the
        # loss did with the rest of the model
        symmetric = flat_loss._symmetric_init(view.ctx)
        if symmetric is not None:
            causes.append(symmetric)
    return causes


class _View:
    """The records, and flat_loss's per-parameter view of them built once, on first use."""

    def __init__(self, records: Records, catalogue: Catalogue):
        self.records = records
        self.catalogue = catalogue

    @functools.cached_property
    def ctx(self) -> Any:
        return _ctx(self.records, self.catalogue)


def _ctx(records: Records, catalogue: Catalogue) -> Any:
    """flat_loss's per-parameter view, built without a flat curve (its checks need one)."""
    return flat_loss._Context.unflat(records, catalogue)


def rebuilt_optimizer(view: _View) -> Cause | None:
    """`optimizer_rebuilt`: a new optimizer over the model's parameters every step."""
    cause = flat_loss._optimizer_rebuilt(view.ctx)
    if cause is None:
        return None
    return dataclasses.replace(cause, confidence=RANK["optimizer_rebuilt"])


def carried_gradients(view: _View) -> Cause | None:
    """`zero_grad_missing`: the first backward pass of a step found earlier steps' grads."""
    if view.records.grad_carry.empty:
        return None
    cause = flat_loss._zero_grad_missing(view.ctx)
    if cause is None:
        return None
    return dataclasses.replace(cause, confidence=RANK["zero_grad_missing"])


def probabilities_into_logits_loss(view: _View, shown: str | None) -> Cause | None:
    """`softmax_before_loss`: `CrossEntropyLoss` / `BCEWithLogitsLoss` (they expect logits)
    fed normalised rows / sigmoid outputs.

    On a run that looks fine, only probabilities count: log-probabilities into
    `CrossEntropyLoss` are harmless (log-softmax is idempotent), and NLL on log-probs right.
    """
    found = flat_loss.normalised_input(view.ctx)
    if found is None or found.loss == "NLLLoss":
        return None  # probabilities into NLLLoss: the first loss is below zero (_initial_loss)
    if shown is None and found.case == "log_probabilities":
        return None
    cause = flat_loss._softmax_before_loss(view.ctx)
    if cause is None:
        return None
    return dataclasses.replace(cause, confidence=RANK["softmax_before_loss"])


def _flat_loss_cause(view: _View, check: Any) -> tuple[Any, Cause] | None:
    """A flat-loss cause check run on its own: the parameter evidence stands without a
    flat loss once a few steps were sampled."""
    if view.records.params.empty:
        return None
    ctx = view.ctx
    if ctx.sampled_steps < 3:
        return None
    cause = check(ctx)
    return None if cause is None else (ctx, cause)


def params_without_gradient(view: _View, *, warn_only: bool) -> Cause | None:
    """`no_gradient_flow`: parameters of modules the forward runs that never get a gradient."""
    found = _flat_loss_cause(view, flat_loss._no_gradient_flow)
    if found is None:
        return None
    ctx, cause = found
    if warn_only:
        pp = ctx.per_param
        cut = ctx.t("max_grad_share", "no_gradient_flow")
        used = pp[pp["module"].isin(ctx.called) & pp["in_optimizer"]]
        none = used[used["has_grad"] <= cut]
        if used.empty or none["numel"].sum() < NO_GRAD_WARN_SHARE * used["numel"].sum():
            return None
    return cause


def params_outside_optimizer(view: _View) -> Cause | None:
    """`params_not_in_optimizer`: parameters get gradients, sit in no param group of the
    optimizer given to `watch`, and never change. A loss can still fall (the rest of the
    model adapts to a part frozen at its initialisation: a head swapped in after the
    optimizer was built). Parameters that do change are trained by something else (a
    second optimizer, a hand-written update), and pretrained-looking ones left out on
    purpose are a freeze (`SGD(model.head.parameters())`): no evidence. Weights that still
    look like their layer type's fresh default init were never meant to be left out."""
    found = _flat_loss_cause(view, flat_loss._params_not_in_optimizer)
    if found is None:
        return None
    ctx, cause = found
    pp = ctx.per_param
    outside = pp[~pp["in_optimizer"] & (pp["grad_pos"] >= 0.5) & ~pp["drifted"]]
    if (outside["update_rows"] == 0).any() or (outside["changed"] > 0).any():
        return None
    meta_params = view.records.meta.get("params", {})
    tol = ctx.t("fresh_rms_tolerance", "no_gradient_flow")
    # their rms from the recorded norm (they never change); no absmax is kept for them
    rms = {
        n: float(outside.at[n, "norm"]) / math.sqrt(max(1, int(outside.at[n, "numel"])))
        for n in outside.index
    }
    looks = [
        (n, v)
        for n in outside.index
        if (
            v := flat_loss._fresh_init(
                ctx, n, {**meta_params.get(n, {}), "rms": rms[n], "absmax": 0.0}, tol
            )
        )
        is not None
    ]
    fresh = [(n, v) for n, v in looks if v[1]]
    if not looks or sum(v[0] for _, v in fresh) < 0.5 * sum(v[0] for _, v in looks):
        return None
    name, (_, _, info) = fresh[0]
    fresh_init = view.catalogue.text(
        HOME,
        "params_not_in_optimizer",
        "fresh_left_out",
        param=name,
        init=info["init"],
        rms=num(info["rms"]),
        expected_rms=num(info["expected_rms"]),
    )
    return dataclasses.replace(cause, evidence=f"{cause.evidence}{fresh_init}")


def grads_cleared_before_step(records: Records, catalogue: Catalogue) -> Cause | None:
    """`optimizer_not_stepping`: `zero_grad()` between `backward()` and `step()`."""
    info = records.meta.get("loop_order") or {}
    cleared = int(info.get("cleared_before_step") or 0)
    steps = int(records.meta.get("steps") or 0)
    text = _texts()["grads_cleared_before_step"]
    if steps < 3 or cleared < text["thresholds"]["min_share"] * steps:
        return None
    # the records agree: a backward pass gave the optimizer's parameters gradients, and at
    # the step they were gone
    gc = records.grad_carry
    zero_at_step = float((gc["step_norm"] == 0).mean()) if len(gc) else math.nan
    order = str(info.get("order") or "backward(), zero_grad(), step()")
    key = "grads_cleared_before_step"
    fields = dict(order=order, cleared=cleared, steps=steps)
    seen = _text(key, "seen", zero=f"{zero_at_step:.0%}") if math.isfinite(zero_at_step) else ""
    return _variant(
        catalogue,
        key,
        RANK[key],
        _text(key, "evidence", seen=seen, **fields),
        step=info.get("first_cleared_step"),
        **fields,
    )


def lr_collapsed(records: Records, catalogue: Catalogue) -> Cause | None:
    """`lr_too_low`: the lr the optimizer used fell orders of magnitude below where it
    started (a scheduler stepped per batch, a warm-up that never ends) before the loss fell.
    """
    steps = records.steps
    loss = records.train_loss()
    if len(steps) < 10 or len(loss) < 10:
        return None
    info = records.meta.get("loop_order") or {}
    t = _texts()["lr_collapsed"]["thresholds"]
    lr = steps.set_index("step")["lr"].astype(float)
    lr = lr[np.isfinite(lr)]
    if lr.empty:
        return None
    refs = [v for v in (info.get("optimizer_lr"), info.get("initial_lr")) if v]
    ref = max([float(lr.max()), *refs])
    if not ref > 0:
        return None
    floor = ref * float(t["lr_floor_ratio"])
    low = lr < floor
    if low.mean() < float(t["min_share"]) or not low.iloc[-1]:
        return None
    # the step from which the lr stays below the floor
    above = lr[~low]
    step = int(lr.index[0]) if above.empty else int(lr[lr.index > above.index[-1]].index[0])
    values = loss.to_numpy(dtype=float)
    w = max(3, len(values) // 10)
    start = float(np.median(values[:w]))
    at = float(np.median(loss[loss.index <= max(step, int(loss.index[w - 1]))].to_numpy()[-w:]))
    end = float(np.median(values[-w:]))
    if not (math.isfinite(start) and start > 0):
        return None
    fell = max(start - at, start - end) / abs(start)
    if fell > float(t["loss_fell_max"]):
        return None  # the loss fell first: a schedule that ends low is not this bug
    n = int(records.meta.get("steps") or len(lr))
    schedulers = info.get("schedulers") or {}
    sched = max(schedulers.items(), key=lambda kv: kv[1].get("calls", 0), default=None)
    # still climbing at the end: a warm-up longer than the run, whoever sets the lr
    rising = float(lr.iloc[-1]) > 1.5 * float(lr.iloc[len(lr) // 2])
    text = functools.partial(_text, "lr_collapsed")
    if sched is not None:
        name, entry = sched
        calls = int(entry.get("calls", 0))
        per_step = calls / max(1, n)
        how = text("by_scheduler", name=name, calls=calls, steps=n)
    else:
        name, per_step = "", 0.0
        how = text("by_code")
    # which mistake the schedule shows: the recipe's `where_<case>` and `fix_<case>`
    if rising:
        how += text("still_rising")
        case = "warm_up"
    elif per_step >= float(t["per_batch_calls"]):
        case = "per_batch"
    elif name:
        case = "scheduler"
    else:
        case = "schedule_function"
    fields = dict(
        step=step,
        lr_ref=num(ref),
        lr_end=num(float(lr.iloc[-1])),
        lr_floor=num(floor),
        schedule=f" {how}",  # after "built with {lr_ref}" in the first check
        loss_start=num(start),
        loss_end=num(end),
        where=text(f"where_{case}", name=name),
        fix=text(f"fix_{case}", name=name),
    )
    evidence = text(
        "evidence",
        lr_start=num(float(lr.iloc[0])),
        ratio=f"{float(t['lr_floor_ratio']):g}",
        share=f"{low.mean():.0%}",
        **fields,
    )
    return _variant(catalogue, "lr_collapsed", RANK["lr_collapsed"], evidence, **fields)


# --- overfit-one-batch that did not memorise (§5) --------------------------------------
#: flat_loss's evidence-based causes that need no flat curve (what each rules out, in words:
#: `recipes/direct_evidence/overfit.toml`, keyed by the cause)
OVERFIT_CHECKS: tuple[str, ...] = (
    "_optimizer_not_stepping",
    "_params_not_in_optimizer",
    "_zero_grad_missing",
    "_softmax_before_loss",
    "_no_gradient_flow",
    "_dead_relu",
    "_vanishing_gradient",
    "_lr_too_low",
    "_unnormalized_input",
)
#: checked by their own rules on every run (_initial_loss.py via flat_loss, shape_mismatch.py)
OVERFIT_ALSO_RULED_OUT = ("bad_initial_loss", "batch_dim_mixing")


def overfit_causes(view: _View) -> list[Cause]:
    """Every evidence-based cause flat_loss knows, read on a curve that need not be flat."""
    if view.records.params.empty and view.records.loss_inputs.empty:
        return []
    ctx = view.ctx
    out = []
    for name in OVERFIT_CHECKS:
        check = getattr(flat_loss, name, None)
        cause = _quiet(lambda check=check: check(ctx)) if check is not None else None
        if cause is not None:
            out.append(cause)
    return out


def overfit_ruled_out() -> list[str]:
    """What a failed overfit run's rules look at (for the verdict when none fits)."""
    causes = [name.lstrip("_") for name in OVERFIT_CHECKS] + list(OVERFIT_ALSO_RULED_OUT)
    return [_text("overfit", cause, section="ruled_out") for cause in causes]


def overfit_next() -> str:
    """What to print next when nothing recorded explains a batch that was not memorised."""
    return _text("overfit", "print_next")


# --- helpers ------------------------------------------------------------------------------
def _merge(a: list[Cause], b: list[Cause]) -> list[Cause]:
    best: dict[str, Cause] = {}
    for c in [*a, *b]:
        if c.id not in best or c.confidence > best[c.id].confidence:
            best[c.id] = c
    return list(best.values())
