"""overfitting: the validation loss does not follow the training loss.

Read from the `losses` table: the "val" split (losses computed in eval mode or without
grad) per evaluation step, against the train loss around the same steps. Runs without
a validation loss give no finding. `overfitting`: validation rose clearly and lastingly
after its best point while the train loss kept falling. `bad_split`: validation sat far
above the train loss from the first evaluation and never tracked it.

`train_mode_missing` is read first, from `run.json` `backward_modes` (the model's mode at
each backward pass): the model trained in train mode, then kept training in eval mode
after a validation. Those training losses are filed under "val", so the curves are mixed
and the two causes above are not judged from them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from .._catalogue import Catalogue
from .._finding import Cause, Finding
from .._hookspecs import hookimpl
from .._records import Records
from ._common import num

SYMPTOM = "overfitting"
#: the causes this rule decides (checked by tests/test_catalogue.py)
CAUSES = frozenset(
    {
        "overfitting",
        "bad_split",
        "train_mode_missing",
        "same_batch_every_step",
        "batches_sorted_by_class",
    }
)
#: a validation loss worse from its first evaluation on: two readings, neither sure
NEVER_TRACKED_CONFIDENCE = 0.5
FROM_FIRST_CONFIDENCE = 0.45


@hookimpl
def trainlens_diagnose(records: Records, catalogue: Catalogue) -> list[Finding]:
    left_in_eval = _train_mode_missing(records, catalogue)
    if left_in_eval is not None:
        # training losses filed under "val": the two curves are mixed, no verdict from them
        severity, cause = left_in_eval
        return [catalogue.finding(SYMPTOM, severity, [cause])]
    # batches of one class each: read from the targets, whatever the curves show
    ordered = _sorted_batches(records, catalogue)
    alone = [_alone(catalogue, ordered)] if ordered is not None else []
    val = records.val_loss()
    train = records.train_loss()
    if len(val) < catalogue.threshold(SYMPTOM, "min_evals") or len(train) < 2:
        return alone
    if not (np.isfinite(val.to_numpy()).all() and np.isfinite(train.to_numpy()).all()):
        return []  # non_finite reports it
    # the train loss "at" an evaluation: the mean of the few steps before it (a single
    # mini-batch is noisy)
    smooth = train.rolling(5, min_periods=1).mean()
    train_at = pd.Series(
        [float(smooth[smooth.index <= s].iloc[-1]) if (smooth.index <= s).any() else np.nan
         for s in val.index],
        index=val.index,
    ).bfill()  # fmt: skip
    causes: list[Cause] = []
    severity = "warning"
    split = _bad_split(catalogue, val, train_at, float(train.iloc[0]))
    if split is not None:
        causes.append(split)
    # a loss that goes below zero (a Gaussian or flow likelihood, KL) has no zero to measure
    # a rise from: its rises are measured against how far training moved the train loss
    signed = min(float(val.min()), float(train.min())) <= 0
    scale = float(train.iloc[0]) - float(train.min()) if signed else None
    over = _overfitting(catalogue, val, train_at, scale)
    if over is not None:
        cause, extreme = over
        causes.append(cause)
        severity = "error" if extreme else severity
        if split is None and int(np.argmin(val.to_numpy(dtype=float))) == 0:
            # validation worse from its first evaluation on, never tracking training: a
            # model that memorises from the first epoch, or validation data prepared
            # differently (raw features, other labels); the curves cannot tell which
            causes.insert(0, _never_tracked(catalogue, val, train_at, float(train.iloc[0])))
    if not causes:
        return alone
    same = _same_batch(records, catalogue) or ordered
    if same is not None:
        # the curves are what one memorised batch gives, or batches of one class each:
        # the other readings of them stay listed, below it and unsure
        causes = [
            same,
            *(dataclasses.replace(c, confidence=min(c.confidence, 0.3)) for c in causes),
        ]
        severity = "error"
    return [
        catalogue.finding(
            SYMPTOM,
            severity,
            causes,
            evidence={
                "val_loss": {int(k): float(v) for k, v in val.items()},
                "train_loss_at_eval": {int(k): float(v) for k, v in train_at.items()},
            },
        )
    ]


def _same_batch(records: Records, catalogue: Catalogue) -> Cause | None:
    """A loop that starts a new iterator over its training loader every step
    (`next(iter(loader))`) and so draws the same first batch each time: the loader probe's
    counts (`meta["loaders"]`), and either a sampler that always starts at sample 0 or the
    model's input identical on the sampled steps (a shuffling sampler gives a new batch
    each pass, which is no bug). A loader of one batch (full-batch training) is not this."""
    th = lambda name: catalogue.threshold(SYMPTOM, name, "same_batch_every_step")  # noqa: E731
    steps = records.steps
    n_steps = int(steps["step"].max()) + 1 if not steps.empty else 0
    loaders = [
        e
        for e in records.meta.get("loaders") or []
        if (e.get("batches") or 0) >= 2
        and e.get("steps_started", 0) >= max(th("min_steps"), th("share") * n_steps)
    ]
    if not loaders:
        return None
    loader = max(loaders, key=lambda e: e["steps_started"])
    inputs = records.inputs
    train = inputs[inputs["split"].astype(str) == "train"] if not inputs.empty else inputs
    stats = train[["mean", "std", "min", "max"]].to_numpy(dtype=float) if len(train) else None
    same = 0
    if stats is not None and len(stats) >= th("min_sampled"):
        same = int(np.isclose(stats, stats[0], rtol=1e-6, atol=0, equal_nan=True).all(1).sum())
    identical = (
        stats is not None
        and len(stats) >= th("min_sampled")
        and (same >= th("same_share") * len(stats))
    )
    sequential = loader.get("sampler") == "SequentialSampler"
    if not (identical or sequential):
        return None

    def text(key: str, **fields: object) -> str:
        return catalogue.text(SYMPTOM, "same_batch_every_step", key, **fields)

    detail = text("same_inputs", same=same, sampled=len(stats)) if identical else ""
    if sequential:
        detail += text("sequential")
    batch_size = loader.get("batch_size")
    described = text("loader", batch_size=batch_size, sampler=loader.get("sampler"))
    if batch_size:
        seen = text("seen", seen=batch_size, samples=loader["batches"] * batch_size)
    else:
        seen = text("seen_unknown")
    return catalogue.cause(
        SYMPTOM,
        "same_batch_every_step",
        confidence=0.9,
        step=int(loader.get("first_step") or 0),
        onset=int(loader.get("first_step") or 0),
        batches=loader["batches"],
        loader=described,
        started=loader["steps_started"],
        steps=n_steps,
        same=detail,
        seen=seen,
    )


def _sorted_batches(records: Records, catalogue: Catalogue) -> Cause | None:
    """Training batches that each hold a class or two of many (`sorted_batches`): data
    sorted by label and read in order."""
    seen = sorted_batches(records, catalogue)
    if seen is None:
        return None
    return catalogue.cause(
        SYMPTOM,
        "batches_sorted_by_class",
        confidence=0.9,
        onset=seen["onset"],
        low=seen["low"],
        looks=seen["looks"],
        targets=seen["targets"],
        batch_h=num(seen["ceiling"]),
        median_h=num(seen["median"]),
        prior_h=num(seen["prior"]),
        classes=seen["classes"],
        order=catalogue.text(SYMPTOM, "batches_sorted_by_class", seen["order"]),
    )


def sorted_batches(records: Records, catalogue: Catalogue) -> dict[str, Any] | None:
    """The numbers of training batches that each hold a class or two of many, from the
    loss probe's count of each batch's classes (`loss_inputs.batch_entropy`) against the
    class mix of every target counted, on batches large enough that a random one holds
    every class, read in stored order (`read_in_order`). Also read by flat_loss: a loss
    flat at the class prior is this, not targets that nothing explains."""
    if SYMPTOM not in catalogue:
        return None
    th = lambda name: catalogue.threshold(SYMPTOM, name, "batches_sorted_by_class")  # noqa: E731
    li = records.loss_inputs
    if "batch_entropy" not in li.columns:
        return None  # a run recorded before the batches' class mix was
    li = li[(li["split"] == "train") & li["batch_entropy"].notna()].sort_values("step")
    if li.empty:
        return None
    li = li[li["loss"] == li["loss"].mode().iloc[0]]
    if len(li) < th("min_looks"):
        return None
    prior = float(li["baseline"].max())  # the class mix grows as the sorted data goes by
    effective = float(np.exp(prior)) if np.isfinite(prior) else np.nan
    targets = float(li["batch_targets"].median())
    if not (prior >= th("min_prior_entropy") and targets >= th("targets_per_class") * effective):
        return None
    looks = li.iloc[1:]  # the first look's mix is the whole run's so far
    ceiling = th("entropy_share") * prior
    low = int((looks["batch_entropy"] <= ceiling).sum())
    if low < th("low_share") * len(looks):
        return None
    order = read_in_order(records)
    if order is None:
        return None
    return {
        "onset": int(looks["step"].iloc[0]),
        "low": low,
        "looks": len(looks),
        "targets": int(targets),
        "ceiling": ceiling,
        "median": float(looks["batch_entropy"].median()),
        "prior": prior,
        "classes": int(li["classes"].max()),
        "order": order,
    }


def read_in_order(records: Records) -> str | None:
    """How the loop read its training data, when in stored order: "sequential" (a
    `DataLoader` whose sampler is a `SequentialSampler`), "sliced" (no loader at all);
    None when the loop's loader shuffles or builds its batches its own way (a sampler or
    batch sampler of the user's own: an episodic or P x K sampler, on purpose)."""
    loaders = [e for e in records.meta.get("loaders") or [] if e.get("steps_started")]
    if not loaders:
        return "sliced"
    # the training loader: the one most often started with the model in train mode (a
    # validation loader is started after `model.eval()`)
    loader = max(loaders, key=lambda e: (e.get("train_iterators", 0), e["steps_started"]))
    plain = loader.get("batch_sampler") in (None, "BatchSampler")
    return "sequential" if loader.get("sampler") == "SequentialSampler" and plain else None


def _alone(catalogue: Catalogue, cause: Cause) -> Finding:
    """Sorted batches on a run whose curves look fine: a warning (it learns slower and
    forgets the earlier classes), not an alarm."""
    cause = dataclasses.replace(cause, confidence=min(cause.confidence, 0.8))
    return catalogue.finding(SYMPTOM, "warning", [cause], evidence={"symptom_shown": None})


def _train_mode_missing(records: Records, catalogue: Catalogue) -> tuple[str, Cause] | None:
    """The model trained in train mode, then went on training in eval mode: a validation's
    `model.eval()` with no `model.train()` after it. A model in eval mode from its first
    backward pass on may be so on purpose (frozen batch-norm statistics): no finding."""
    modes = records.meta.get("backward_modes") or {}
    th = lambda name: catalogue.threshold(SYMPTOM, name, "train_mode_missing")  # noqa: E731
    evals, trains = int(modes.get("eval") or 0), int(modes.get("train") or 0)
    before = modes.get("train_before")
    if not before or evals < th("min_passes") or evals < th("share") * (evals + trains):
        return None
    kinds = tuple(th("mode_dependent"))
    modules = records.meta.get("modules", {})
    layers = sorted(
        {str(m.get("type")) for m in modules.values() if str(m.get("type")).startswith(kinds)}
    )
    step = int(modes["first_eval_step"])

    def text(key: str, **fields: object) -> str:
        return catalogue.text(SYMPTOM, "train_mode_missing", key, **fields)

    effect = text("layers", layers=", ".join(layers)) if layers else text("no_layers")
    cause = catalogue.cause(
        SYMPTOM,
        "train_mode_missing",
        confidence=0.9,
        evidence=text("seen", evals=evals, passes=evals + trains, step=step, before=int(before))
        + effect,
        step=step,
        onset=step,
    )
    # with dropout or batch norm the training itself changed; without, only the records
    return ("error" if layers else "warning"), cause


def _overfitting(
    catalogue: Catalogue, val: pd.Series, train_at: pd.Series, scale: float | None = None
) -> tuple[Cause, bool] | None:
    """Validation rose lastingly from its best while the train loss kept falling. Rises and
    falls are relative to the loss itself, or to `scale` (how far training moved the train
    loss) for a loss that goes below zero."""
    th = lambda name: catalogue.threshold(SYMPTOM, name, "overfitting")  # noqa: E731
    if scale is not None and not scale > 0:
        return None  # the train loss never fell: nothing to measure a rise against
    values = val.to_numpy(dtype=float)
    b = int(np.argmin(values))
    after = values[b + 1 :]
    if len(after) < th("min_evals_after_best"):
        return None
    best = float(values[b])

    def rise(x: Any, ref: float) -> Any:  # how far above `ref`, as a fraction
        return (x - ref) / scale if scale is not None else x / ref - 1

    last = float(np.mean(values[-2:]))
    # lasting: the last two evaluations both above the bar, and most of those after best
    if not (
        (rise(values[-2:], best) > th("rise")).all()
        and (rise(after, best) > th("rise") / 2).mean() >= 0.6
    ):
        return None
    t_best = float(train_at.iloc[b])
    t_last = float(train_at.iloc[-1])
    if not -rise(t_last, t_best) > th("train_fall"):
        return None  # train loss did not keep falling: not memorisation
    step = int(val.index[b])
    ratio = 1 + rise(last, best) if scale is not None or best > 0 else np.inf
    conf = min(0.9, 0.55 + 0.15 * np.log2(max(ratio, 1.0)))
    if b == 0:  # never improved: it did not track first, so memorising is one reading of two
        conf = FROM_FIRST_CONFIDENCE
    fields = dict(
        best_val=num(best),
        last_val=num(last),
        ratio=num(ratio),
        evals=len(after),
        train_at_best=num(t_best),
        train_last=num(t_last),
    )
    evidence = None
    if b == 0:
        evidence = catalogue.text(SYMPTOM, "overfitting", "from_first", step=step, **fields)
    elif scale is not None:
        evidence = catalogue.text(
            SYMPTOM,
            "overfitting",
            "below_zero",
            step=step,
            scale=num(scale),
            rise=f"{rise(last, best):.0%}",
            **fields,
        )
    cause = catalogue.cause(
        SYMPTOM, "overfitting", confidence=conf, evidence=evidence, step=step, **fields
    )
    return cause, b > 0 and ratio >= th("extreme_ratio")


def _never_tracked(
    catalogue: Catalogue, val: pd.Series, train_at: pd.Series, train_first: float
) -> Cause:
    """bad_split's reading of a validation loss that got worse from its first evaluation."""
    v0, t0 = float(val.iloc[0]), float(train_at.iloc[0])
    ratios = val / train_at.where(train_at > 0)
    fields = dict(
        step=int(val.index[0]),
        first_val=num(v0),
        first_train=num(t0),
        ratio=num(v0 / t0) if t0 > 0 else "?",
        evals=len(val),
        min_ratio=num(float(ratios.min())) if ratios.notna().any() else "?",
        val_fall=f"{1 - float(val.min()) / v0:.0%}" if v0 > 0 else "?",
        train_fall=f"{1 - float(train_at.min()) / max(train_first, t0):.0%}",
        last_val=num(float(val.iloc[-1])),
        train_last=num(float(train_at.iloc[-1])),
    )
    evidence = catalogue.text(SYMPTOM, "bad_split", "never_tracked", **fields)
    cause = catalogue.cause(
        SYMPTOM, "bad_split", confidence=NEVER_TRACKED_CONFIDENCE, evidence=evidence, **fields
    )
    check = catalogue.text(SYMPTOM, "bad_split", "never_tracked_check", **fields)
    return dataclasses.replace(cause, first_check=check)


def _bad_split(
    catalogue: Catalogue, val: pd.Series, train_at: pd.Series, train_first: float
) -> Cause | None:
    th = lambda name: catalogue.threshold(SYMPTOM, name, "bad_split")  # noqa: E731
    v0, t0 = float(val.iloc[0]), float(train_at.iloc[0])
    if not (t0 > 0 and v0 > th("gap_ratio") * t0):
        return None
    if v0 - t0 < th("gap_of_start") * train_first:
        return None  # a gap small against the loss scale: a converged model's usual gap
    ratios = val / train_at.where(train_at > 0)
    if not (ratios.dropna() >= th("track_ratio")).all():
        return None
    # never tracking: train improved, validation much less (relative)
    t_fall = 1 - float(train_at.min()) / max(train_first, t0)
    v_fall = 1 - float(val.min()) / v0
    if t_fall <= 0.2 or v_fall > th("fall_fraction") * t_fall:
        return None
    step = int(val.index[0])
    return catalogue.cause(
        SYMPTOM,
        "bad_split",
        confidence=0.85,
        step=step,
        first_val=num(v0),
        first_train=num(t0),
        ratio=num(v0 / t0),
        evals=len(val),
        min_ratio=num(float(ratios.min())),
        val_fall=f"{v_fall:.0%}",
        train_fall=f"{t_fall:.0%}",
    )
