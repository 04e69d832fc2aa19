"""diverging: the training loss rose, or fell and came back up.

The loss curve decides whether there is a finding; the parameter statistics decide why.
`lr_too_high` rests on the update/param ratio of the first sampled steps, or of those
where the loss began to rise (large before anything blew up: the step size itself is
wrong); `exploding_gradient` on the total
gradient norm growing by orders of magnitude (or spiking) while the early updates were
moderate. Runs whose loss turns NaN/Inf are left to `non_finite`, which reuses
`divergence_causes` for the same two causes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .._catalogue import Catalogue
from .._finding import Cause, Finding
from .._hookspecs import hookimpl
from .._records import Records
from ._common import input_outliers, num

SYMPTOM = "diverging"
#: the causes this rule decides (checked by tests/test_catalogue.py)
CAUSES = frozenset(
    {
        "lr_too_high",
        "exploding_gradient",
        "gradient_ascent",
        "unnormalized_input",
        "loss_unbounded_below",
    }
)


#: "the loss had been falling" before a gradient jump: no loss on the way above its start
#: by more than this factor (one noisy mini-batch may sit a little above it)
FELL_MARGIN = 1.1


@dataclass
class Dynamics:
    """What the parameter statistics say about the size of steps and gradients."""

    early_ratio: float  # median update/param ratio, first sampled steps or at the onset
    median_ratio: float  # over the whole window
    ratio_module: str | None  # the module with the largest early ratio
    grad_start: float  # total gradient norm at the first sampled step
    grad_max: float
    grad_max_step: int | None
    grad_median: float
    grad_module: str | None  # where the gradient is largest at its peak
    growth_orders: float  # log10(grad_max / grad_start)
    spike: float  # grad_max / grad_median
    monotone: float  # fraction of sampled steps where the total norm grew
    lr: float
    early_steps: tuple[int, ...] = ()  # the sampled steps of the "early" ratio
    ratios: pd.Series | None = None  # whole-model update/param ratio per sampled step
    growth_step: int | None = None  # first sampled step 10x above the starting grad norm
    # the largest one-step growth of the total gradient norm between neighbouring steps
    # (log10), and whether the train loss had been falling up to that step
    jump_orders: float = 0.0
    fell_before_jump: bool = False
    # backward passes per optimizer step (median): gradient accumulation when above 1
    passes: int = 1
    # the terms a loss with `reduction="sum"` adds up (its gradient is that many times the
    # mean's at the same lr); None for a mean, or when unknown
    summed: int | None = None
    # an optimizer whose step grows with the gradient (SGD; a loop without an optimizer
    # steps by hand): for Adam and its kin the scale of the gradient washes out
    scale_sensitive: bool = False
    # the lr the optimizer was built with, and the scheduler stepped most (None: none)
    lr_built: float | None = None
    scheduler: str | None = None


def dynamics(
    records: Records, before: int | None = None, onset: int | None = None
) -> Dynamics | None:
    """Update ratios and gradient growth over sampled steps (those `< before` if given).

    With `onset` (the step where the loss started rising), the "early" ratio and lr are
    also taken from the sampled steps around it, whichever ratio is larger: an lr raised
    mid-run (a schedule bug) shows there, not on the first steps.
    """
    p = records.params
    if p.empty:
        return None
    p = p[p["has_grad"].astype(bool)]
    if before is not None:
        p = p[p["step"] < before]
    p = p[np.isfinite(p["grad_norm"]) & np.isfinite(p["param_norm"])]
    if p.empty:
        return None
    steps = sorted(p["step"].unique())
    sq = p.assign(g2=p["grad_norm"] ** 2, p2=p["param_norm"] ** 2, u2=p["update_norm"] ** 2)
    total = sq.groupby("step")["g2"].sum(min_count=1) ** 0.5
    # whole-model ratio |update| / |params| per step: a zero-initialised bias alone would
    # have a huge ratio of its own and mean nothing
    per_step = sq.groupby("step")[["u2", "p2"]].sum(min_count=1)
    ratio = (per_step["u2"] / per_step["p2"].where(per_step["p2"] > 0)) ** 0.5
    ratio = ratio.replace([np.inf, -np.inf], np.nan)
    early_steps = steps[:3]
    early_ratio = _median(ratio[ratio.index.isin(early_steps)])
    lrs = records.steps.set_index("step")["lr"].dropna() if len(records.steps) else None
    lr = float(lrs.iloc[0]) if lrs is not None and len(lrs) else math.nan
    if onset is not None:
        near = [s for s in steps if onset - 5 <= s <= onset][-3:]
        onset_ratio = _median(ratio[ratio.index.isin(near)])
        if onset_ratio > early_ratio:
            early_steps, early_ratio = near, onset_ratio
            if lrs is not None and onset in lrs.index:
                lr = float(lrs.loc[onset])
    early = sq[sq["step"].isin(early_steps)].groupby("module")[["u2", "p2"]].sum(min_count=1)
    by_module = (early["u2"] / early["p2"].where(early["p2"] > 0)).dropna()
    peak_step = int(total.idxmax())
    at_peak = p[p["step"] == peak_step]
    grad_start = float(total.iloc[0])
    grad_max = float(total.max())
    diffs = np.diff(np.log(np.maximum(total.to_numpy(), 1e-30)))
    jump_orders, fell = _sudden_jump(records, total)
    return Dynamics(
        early_ratio=early_ratio,
        median_ratio=_median(ratio),
        ratio_module=str(by_module.idxmax()) or None if not by_module.empty else None,
        grad_start=grad_start,
        grad_max=grad_max,
        grad_max_step=peak_step,
        grad_median=float(total.median()),
        grad_module=str(at_peak.loc[at_peak["grad_norm"].idxmax(), "module"]) or None
        if not at_peak.empty
        else None,
        growth_orders=math.log10(grad_max / grad_start) if grad_start > 0 else 0.0,
        spike=grad_max / float(total.median()) if float(total.median()) > 0 else 1.0,
        monotone=float((diffs > 0).mean()) if len(diffs) else 0.0,
        lr=lr,
        early_steps=tuple(int(s) for s in early_steps),
        ratios=ratio,
        growth_step=int(above.index[0]) if len(above := total[total > 10 * grad_start]) else None,
        jump_orders=jump_orders,
        fell_before_jump=fell,
        passes=_passes_per_step(records),
        summed=_summed_terms(records),
        scale_sensitive=scale_sensitive(records),
        lr_built=_built_lr(records),
        scheduler=_main_scheduler(records),
    )


def _built_lr(records: Records) -> float | None:
    """The lr the optimizer was built with (a scheduler keeps it as `initial_lr`)."""
    info = records.meta.get("loop_order") or {}
    for key in ("initial_lr", "optimizer_lr"):
        value = info.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
            return float(value)
    return None


def _main_scheduler(records: Records) -> str | None:
    schedulers = (records.meta.get("loop_order") or {}).get("schedulers") or {}
    best = max(schedulers.items(), key=lambda kv: kv[1].get("calls", 0), default=None)
    return best[0] if best is not None and best[1].get("calls", 0) else None


#: optimizers whose step is the lr times the gradient (with momentum: its running sum)
_SCALE_SENSITIVE = frozenset({"SGD", "ASGD"})


def scale_sensitive(records: Records) -> bool:
    """Whether the run's optimizer steps by the lr times the gradient (SGD, ASGD; a loop
    without one steps by hand): a gradient scaled up or down scales its steps. Adam and
    its kin divide by the gradient's own running scale."""
    optimizer = records.meta.get("optimizer")
    if optimizer is None:
        return not records.meta.get("optimizer_given", True)
    return optimizer.get("class") in _SCALE_SENSITIVE


def _summed_terms(records: Records) -> int | None:
    """How many terms the run's loss sums (`reduction="sum"`, from its first call): a
    class score per sample (and position) for a classification loss, every element
    otherwise. None for a mean, or when that first call was not seen."""
    info = records.meta.get("initial_loss") or {}
    shape = info.get("input_shape")
    if info.get("reduction") != "sum" or not shape:
        return None
    dims = [int(d) for d in shape]
    if info.get("kind") == "multiclass" and len(dims) >= 2:
        dims = [dims[0], *dims[2:]]  # [N, C, ...]: one term per sample and position
    terms = math.prod(dims)
    return terms if terms > 1 else None


def _outlier_inputs(
    records: Records, catalogue: Catalogue, loss_fields: dict[str, Any]
) -> Cause | None:
    """A few training input rows far off the scale of the rest (`input_outliers`): their
    gradients throw the weights about while a typical batch looks fine."""
    th = lambda name: catalogue.threshold(SYMPTOM, name, "unnormalized_input")  # noqa: E731
    found = input_outliers(records, th("outlier_factor"), th("max_share"), th("min_sampled"))
    if found is None:
        return None
    text = functools.partial(catalogue.text, SYMPTOM, "unnormalized_input")
    return catalogue.cause(
        SYMPTOM,
        "unnormalized_input",
        confidence=0.8,
        evidence=text(
            "outliers",
            peak=num(found["peak"]),
            hit=found["hit"],
            sampled=found["sampled"],
            typical=num(found["typical"]),
            factor=num(found["factor"]),
        ),
        typical=num(found["typical"]),
        onset=found["first_step"],
        **loss_fields,
    )


def _gradient_ascent(
    records: Records, catalogue: Catalogue, loss_fields: dict[str, Any]
) -> Cause | None:
    """The steps climb the loss: the update points along the gradient on the first
    sampled steps (`p += lr * p.grad`, run.json `update_direction`), or backward runs on
    the loss's negation (`(-loss).backward()`, `negated_loss`), which the optimizer then
    descends. Either rises at any lr."""
    th = lambda name: catalogue.threshold(SYMPTOM, name, "gradient_ascent")  # noqa: E731
    text = functools.partial(catalogue.text, SYMPTOM, "gradient_ascent")
    meta = records.meta
    cosines = [
        (int(d["step"]), float(d["cosine"]))
        for d in meta.get("update_direction") or []
        if d.get("cosine") is not None and math.isfinite(float(d["cosine"]))
    ]
    uphill = [c for _, c in cosines if c > th("min_cosine")]
    negated = meta.get("negated_loss") or {}
    passes, neg = int(negated.get("passes") or 0), int(negated.get("negated") or 0)
    if passes >= th("min_passes") and neg >= th("share") * passes:
        evidence, fix_key = text("negated", negated=neg, passes=passes), "fix_negated"
        step = negated.get("first_step")
    elif len(cosines) >= th("min_passes") and len(uphill) >= th("share") * len(cosines):
        evidence = text(
            "uphill",
            uphill=len(uphill),
            steps=len(cosines),
            low=f"{min(uphill):+.2f}",
            high=f"{max(uphill):+.2f}",
        )
        fix_key, step = "fix_uphill", cosines[0][0]
    else:
        return None
    cause = catalogue.cause(
        SYMPTOM, "gradient_ascent", confidence=0.9, evidence=evidence, step=step, **loss_fields
    )
    return dataclasses.replace(cause, fix_attempt=text(fix_key))


def _passes_per_step(records: Records) -> int:
    """Backward passes the loop runs per optimizer step, the median over the run (1 if
    unknown, or if the optimizer ran passes itself: LBFGS's `step(closure)` evaluates the
    loss several times a step, which is no accumulation)."""
    if records.meta.get("in_step_backward_passes"):
        return 1
    steps = records.steps
    if steps.empty or "backward_passes" not in steps.columns:
        return 1
    passes = pd.to_numeric(steps["backward_passes"], errors="coerce").dropna()
    return max(1, int(passes.median())) if len(passes) else 1


def _sudden_jump(records: Records, total: pd.Series) -> tuple[float, bool]:
    """The largest growth of the gradient norm from one step to the next (sampled steps
    that are neighbours), and whether the train loss fell from the first step up to it:
    a recurrent net hitting a cliff of its loss surface, not a step size too large from
    the start (that makes the loss rise at once)."""
    steps = total.index.to_numpy()
    values = np.log10(np.maximum(total.to_numpy(dtype=float), 1e-30))
    best, at = 0.0, None
    for i in range(1, len(steps)):
        if steps[i] == steps[i - 1] + 1 and values[i] - values[i - 1] > best:
            best, at = float(values[i] - values[i - 1]), int(steps[i])
    if at is None:
        return 0.0, False
    loss = records.train_loss()
    before = loss[loss.index < at].to_numpy(dtype=float)
    if len(before) < 2:
        return best, False
    # below its start just before the jump, and never well above it on the way (a step
    # size too large lifts the loss at once, whatever one noisy batch says later)
    first = before[0]
    return best, bool(before[-1] < first and before.max() <= FELL_MARGIN * first)


#: schedulers that raise the lr far above the optimizer's on purpose, to a max_lr of
#: their own
RAMPING_SCHEDULERS = ("OneCycleLR", "CyclicLR")


def _raised_by_schedule(catalogue: Catalogue, dyn: Dynamics) -> str | None:
    """The fix when the lr at the divergence is many times the lr the optimizer was
    built with: a schedule (or code setting `param_group["lr"]`) raised it."""
    built = dyn.lr_built
    factor = catalogue.threshold(SYMPTOM, "raised_factor", "lr_too_high")
    if built is None or not math.isfinite(dyn.lr) or dyn.lr < factor * built:
        return None
    if dyn.scheduler in RAMPING_SCHEDULERS:
        return None  # their peak is the max_lr the user chose: the generic fix holds
    text = functools.partial(catalogue.text, SYMPTOM, "lr_too_high")
    by = text("by_scheduler", name=dyn.scheduler) if dyn.scheduler else text("by_code")
    return text("raised", lr=num(dyn.lr), built=num(built), times=num(dyn.lr / built), by=by)


def divergence_causes(
    catalogue: Catalogue,
    symptom: str,
    dyn: Dynamics,
    *,
    loss_fields: dict[str, Any],
    step: int | None,
) -> list[Cause]:
    """`lr_too_high` and `exploding_gradient`, each scored by its own evidence.

    `loss_fields` fill the recipe texts and override the fields filled here.

    Large update ratios on the very first steps, before gradients grew, point at the step
    size; gradients growing by orders of magnitude step after step while early updates
    were moderate point at the gradients themselves.
    """
    ratio_high = catalogue.threshold(symptom, "ratio_high", "lr_too_high")
    growth_needed = catalogue.threshold(symptom, "growth_orders", "exploding_gradient")
    spike_needed = (
        catalogue.threshold(symptom, "spike_ratio", "exploding_gradient")
        if symptom == SYMPTOM
        else math.inf
    )
    # the words of both causes are the diverging recipe's, also under `non_finite`
    text = functools.partial(catalogue.text, SYMPTOM)
    causes = []
    r0 = dyn.early_ratio
    # the gradient leapt by orders of magnitude in one step after the loss had been falling
    sudden = dyn.fell_before_jump and dyn.jump_orders >= growth_needed
    if math.isfinite(r0):
        # 0.5 at the threshold, +0.2 per order of magnitude above it
        conf = 0.5 + 0.2 * math.log10(max(r0, 1e-12) / ratio_high)
        if dyn.growth_orders >= growth_needed and r0 < 10 * ratio_high:
            conf -= 0.2  # moderate step sizes that only grew with the gradients
        elif sudden:
            conf -= 0.2  # the loss fell at this step size until the gradient jumped
        conf = min(0.85, conf) if r0 >= ratio_high else min(0.3, conf)
        cause = catalogue.cause(
            symptom,
            "lr_too_high",
            confidence=max(0.05, conf),
            evidence=text(
                "lr_too_high",
                "update_ratio" if math.isfinite(dyn.lr) else "update_ratio_no_lr",
                ratio=num(r0),
                median_ratio=num(dyn.median_ratio),
                lr=num(dyn.lr),
            ),
            module=dyn.ratio_module,
            step=step,
            onset=_first_large(dyn, ratio_high),
            **{
                **dict(
                    ratio=num(r0),
                    lr=num(dyn.lr) if math.isfinite(dyn.lr) else text("lr_too_high", "lr_unknown"),
                ),
                **loss_fields,
            },
        )
        if dyn.passes > 1 and dyn.scale_sensitive:
            # accumulated gradients add up: a loss not divided by the passes makes each
            # step that many times what the lr says
            extra = text("lr_too_high", "accumulation", passes=dyn.passes)
            cause = dataclasses.replace(cause, fix_attempt=f"{cause.fix_attempt} {extra}")
        if dyn.summed and dyn.scale_sensitive:
            # a summed loss's gradient grows with the batch: the same scaling, in the loss
            extra = text("lr_too_high", "summed", terms=dyn.summed)
            cause = dataclasses.replace(cause, fix_attempt=f"{cause.fix_attempt} {extra}")
        raised = _raised_by_schedule(catalogue, dyn)
        if raised is not None:
            # the lr the run diverged at is the schedule's doing, not the one the user chose:
            # dividing that one by 10 leaves the schedule to raise it again
            cause = dataclasses.replace(cause, fix_attempt=raised)
        causes.append(cause)
    grows = dyn.growth_orders >= growth_needed
    spikes = dyn.spike >= spike_needed
    if grows or spikes:
        conf = 0.5 + 0.1 * (max(dyn.growth_orders, math.log10(max(dyn.spike, 1.0))) - 2)
        conf = min(0.85, conf + 0.2 * dyn.monotone)  # exponential growth rises steadily
        if math.isfinite(r0) and r0 >= 10 * ratio_high and not sudden:
            conf -= 0.25  # the updates were huge from the start: the lr came first
        how = text(
            "exploding_gradient",
            "grew" if grows else "spiked",
            orders=f"{dyn.growth_orders:.1f}",
            grad_start=num(dyn.grad_start),
            grad_max=num(dyn.grad_max),
            step=dyn.grad_max_step,
            rising=f"{dyn.monotone:.0%}",
            spike=num(dyn.spike),
            grad_median=num(dyn.grad_median),
        )
        causes.append(
            catalogue.cause(
                symptom,
                "exploding_gradient",
                confidence=max(0.1, conf),
                evidence=how,
                module=dyn.grad_module,
                step=dyn.grad_max_step if step is None else step,
                onset=dyn.growth_step if dyn.growth_step is not None else dyn.grad_max_step,
                **{
                    **dict(grad_start=num(dyn.grad_start), grad_max=num(dyn.grad_max)),
                    **loss_fields,
                },
            )
        )
    return causes


@hookimpl
def trainlens_diagnose(records: Records, catalogue: Catalogue) -> list[Finding]:
    loss = records.train_loss()
    t = lambda name: catalogue.threshold(SYMPTOM, name)  # noqa: E731
    if len(loss) < t("min_steps") or not np.isfinite(loss.to_numpy()).all():
        return []  # too short to show a trend, or non-finite: `non_finite` reports it
    raw = loss.to_numpy(dtype=float)
    fall = floorless(raw, catalogue, settled_check=True)
    if fall is not None:
        return [_floorless_finding(catalogue, fall, loss)]
    k = max(3, len(raw) // 10)
    if float(raw.max()) <= 0 and abs(float(np.median(raw[-k:]))) <= t("ceiling_fraction") * abs(
        float(np.median(raw[:k]))
    ):
        # never above zero, and it rose to zero and stays there: a loss whose ceiling is
        # zero reached it (minus a log-probability times a negative reward, a policy-
        # gradient surrogate whose policy became sure of its action), not a divergence
        return []
    # the ratios below measure a loss from its floor, zero for the usual losses; a loss
    # that goes below zero (KL or NLL fed probabilities, a Gaussian likelihood, a GAN's)
    # has no zero floor, so it is measured from the lowest value it reached
    floor = min(0.0, float(raw.min()))
    values = raw - floor
    k = max(3, len(values) // 10)
    # the loss of step 0 is the one before any update; a lr too high can blow up step 1
    start = min(float(values[0]), float(np.median(values[:3])))
    end = float(np.median(values[-k:]))
    smooth = pd.Series(values).rolling(k, min_periods=k).median().dropna()
    best = float(smooth.min())
    low = max(0, int(smooth.idxmin()) - k + 1)  # where the lowest window starts
    best_step = int(loss.index[low])
    rose = end > t("rise_ratio") * start
    rebound = (
        best > 0
        and end > t("rebound_ratio") * best
        and start > best
        and (end - best) > t("rebound_fraction") * (start - best)
    )
    late = values[len(values) // 2 :]
    swings = float((late > t("rise_ratio") * start).mean())
    oscillates = swings >= t("swing_fraction")
    if floor < 0:
        # below zero the floor is wherever the noise took the loss lowest: a start at (or
        # near) it makes every later value a rise of any ratio (a policy-gradient surrogate
        # whose first value, -0.24, was its lowest, settling at 0). A rise must also clear
        # the loss's own scatter over its first steps (robust: a blow-up at step 1, the
        # very evidence of a lr too high, must not widen it)
        first = raw[:k]
        scatter = 1.4826 * float(np.median(np.abs(first - np.median(first))))
        margin = t("noise_ratio") * scatter
        rose = rose and end - start > margin
        swings = float((late > max(t("rise_ratio") * start, start + margin)).mean())
        oscillates = swings >= t("swing_fraction")
    if not (rose or rebound or oscillates):
        return []
    onset = _first_above(loss.iloc[low:] - floor, max(start, best) * t("rise_ratio"))
    dyn = dynamics(records, onset=onset)
    if dyn is None and oscillates and not (rose or rebound):
        # swings with no recorded update to blame (the weights never moved, e.g. gradients
        # cleared before `step()`): batch-to-batch noise of a fixed model, not a lr too high
        return []
    loss_fields = dict(loss_start=num(start + floor), loss_end=num(end + floor))
    # how the curve diverged: the evidence every cause shares (the recipe's own `[texts]`)
    how = catalogue.text(
        SYMPTOM,
        None,
        "rose"
        if rose
        else ("swung_below_zero" if floor else "swung")
        if oscillates
        else "rebounded",
        start=num(start + floor),
        end=num(end + floor),
        window=k,
        level=num(t("rise_ratio") * start + floor),
        rise_ratio=t("rise_ratio"),
        share=f"{swings:.0%}",
        peak=num(float(late.max()) + floor),
        best=num(best + floor),
        best_step=best_step,
        floor=num(floor),
    )
    causes = (
        divergence_causes(catalogue, SYMPTOM, dyn, loss_fields=loss_fields, step=None)
        if dyn is not None
        else []
    )
    if not causes:
        causes = [
            catalogue.cause(
                SYMPTOM,
                "lr_too_high",
                confidence=0.4,
                evidence=f"{how}; {catalogue.text(SYMPTOM, 'lr_too_high', 'no_statistics')}",
                ratio=catalogue.text(SYMPTOM, "lr_too_high", "ratio_unknown"),
                lr=catalogue.text(SYMPTOM, "lr_too_high", "lr_unknown"),
                **loss_fields,
            )
        ]
    ascent = _gradient_ascent(records, catalogue, loss_fields)
    if ascent is not None:
        # steps that climb the loss rise at any lr: the step size is no cause of its own
        causes = [
            ascent,
            *(dataclasses.replace(c, confidence=min(c.confidence, 0.3)) for c in causes),
        ]
    outliers = _outlier_inputs(records, catalogue, loss_fields) if ascent is None else None
    if outliers is not None:
        # the gradients blew up on the rows far off scale: the mechanism stays listed, below
        causes = [
            outliers,
            *(dataclasses.replace(c, confidence=min(c.confidence, 0.5)) for c in causes),
        ]
    # the curve itself is the first evidence every cause shares
    causes = [dataclasses.replace(c, evidence=f"{how}; {c.evidence}") for c in causes]
    severity = (
        "error"
        if end > t("error_ratio") * start or float(np.mean(late)) > t("error_ratio") * start
        else "warning"
    )
    return [
        catalogue.finding(
            SYMPTOM,
            severity,
            causes,
            step=onset,
            evidence={
                "loss_start": start + floor,
                "loss_end": end + floor,
                "loss_best": best + floor,
                "best_step": best_step,
                "late_swing_fraction": swings,
                "early_update_ratio": None if dyn is None else dyn.early_ratio,
                "grad_growth_orders": None if dyn is None else dyn.growth_orders,
            },
        )
    ]


@dataclass(frozen=True)
class Floorless:
    """A training loss never above zero that fell far below its start: the minus sign of
    a hand-written log-likelihood left out (`(y * torch.log(p)).mean()`)."""

    start: float  # median of the first `window` losses
    end: float  # ... of the last
    window: int
    early: float  # drop over the first third of the run (with `settled_check`)
    late: float  # ... over the last third


def floorless(raw: np.ndarray, catalogue: Catalogue, *, settled_check: bool) -> Floorless | None:
    """The loss has no floor: below zero at every step, ending `growth` times further below
    zero than it started and, with `settled_check` (a finite run), still falling faster at
    its end than at its start. A minus log of probabilities is never below zero; a loss
    that legitimately goes negative (a Gaussian likelihood, a policy-gradient surrogate)
    starts above it or settles, and a converging loss slows down near its floor.
    `non_finite` asks without `settled_check`: there the NaN ended the fall."""
    th = lambda name: catalogue.threshold(SYMPTOM, name, "loss_unbounded_below")  # noqa: E731
    n = len(raw)
    least = th("min_steps") if settled_check else th("min_steps_before_nan")
    if n < least or not np.isfinite(raw).all() or float(raw.max()) >= 0:
        return None
    # before a NaN the fall is short and steep: its first and last values, not medians
    k = max(3, n // 10) if settled_check else max(1, n // 10)
    start, end = float(np.median(raw[:k])), float(np.median(raw[-k:]))
    if end > th("growth") * start:  # both negative: `end` not far enough below zero
        return None
    early = late = math.nan
    if settled_check:

        def around(i: int) -> float:
            return float(np.median(raw[max(0, i - k // 2) : i + (k + 1) // 2]))

        early, late = start - around(n // 3), around(2 * n // 3) - end
        tail = float(np.median(raw[-2 * k : -k])) - end
        if not (
            late > 0 and late >= th("acceleration") * max(early, 0.0) and tail >= th("tail") * late
        ):
            return None
    return Floorless(start=start, end=end, window=k, early=early, late=late)


def _floorless_finding(catalogue: Catalogue, fall: Floorless, loss: pd.Series) -> Finding:
    evidence = catalogue.text(
        SYMPTOM,
        "loss_unbounded_below",
        "falling",
        start=num(fall.start),
        end=num(fall.end),
        window=fall.window,
        early=num(fall.early),
        late=num(fall.late),
    )
    cause = catalogue.cause(
        SYMPTOM,
        "loss_unbounded_below",
        confidence=0.85,
        evidence=evidence,
        step=int(loss.index[0]),
        loss_start=num(float(loss.iloc[0])),
        loss_end=num(fall.end),
    )
    return catalogue.finding(
        SYMPTOM,
        "error",
        [cause],
        step=int(loss.index[0]),
        evidence={
            "loss_start": fall.start,
            "loss_end": fall.end,
            "drop_first_third": fall.early,
            "drop_last_third": fall.late,
        },
    )


def _first_large(dyn: Dynamics, ratio_high: float) -> int | None:
    """The first early step whose update/param ratio was already too large: when the
    lr_too_high evidence showed (for ranking roots before consequences)."""
    if not dyn.early_steps:
        return None
    if dyn.ratios is not None:
        for step in dyn.early_steps:
            r = dyn.ratios.get(step)
            if r is not None and r == r and r >= ratio_high:
                return step
    return dyn.early_steps[-1]


def _first_above(loss: pd.Series, level: float) -> int:
    """The first step whose loss passed `level`: where the divergence shows."""
    above = loss[loss > level]
    return int(above.index[0]) if len(above) else int(loss.index[-1])


def _median(s: pd.Series) -> float:
    s = s.dropna()
    return float(s.median()) if len(s) else math.nan
