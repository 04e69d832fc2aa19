"""non_finite: the first NaN/Inf of the run, where it came from and why.

Sources, all read from records: the train loss per step (`losses`), NaN/Inf sums of
the model input, loss targets and module outputs in call order (`nonfinite`), and
gradient/parameter norms on sampled steps (`params`). The first step with any of them
non-finite is the step that matters; everything later is the NaN spreading.

At that step: NaN/Inf already in the input or target -> `bad_input_data`; else, when
the loss or the gradient norm had been growing by orders before it -> `lr_too_high` /
`exploding_gradient` (ranked as in `diverging`); else the first module, in call order,
whose output was non-finite (its input was finite), or else the output-most parameter
whose gradient was -> `numerical_instability`.

`torch.amp.GradScaler` skips steps whose gradients overflowed without calling
`optimizer.step()`; such steps never reach the parameter statistics, and a few
non-finite gradients with finite losses stay silent (`transient_steps`).
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
from . import _initial_loss
from ._common import num
from .diverging import divergence_causes, dynamics, floorless

SYMPTOM = "non_finite"
#: the causes this rule decides (checked by tests/test_catalogue.py)
CAUSES = frozenset(
    {
        "numerical_instability",
        "bad_input_data",
        "lr_too_high",
        "exploding_gradient",
        "loss_unbounded_below",
    }
)
#: the first check of a NaN from fully masked attention rows, by where the mask came in
MASK_CHECKS = {
    "MultiheadAttention": "masked_check_mha",
    "scaled_dot_product_attention": "masked_check_sdpa",
}


@hookimpl
def trainlens_diagnose(records: Records, catalogue: Catalogue) -> list[Finding]:
    t = lambda name: catalogue.threshold(SYMPTOM, name)  # noqa: E731
    losses = records.losses
    train = losses[losses["split"] == "train"]
    bad_loss = train[~np.isfinite(train["value"].astype(float))]
    nf = records.table("nonfinite")
    params = records.params
    if not params.empty:
        params = params[params["has_grad"].astype(bool)]
    # a NaN norm proves a NaN value; an Inf norm may be finite values overflowing the
    # float32 sum of squares (a diverging run), which `diverging` reports
    bad_grad = params[np.isnan(params["grad_norm"].astype(float))] if len(params) else params
    bad_param = params[np.isnan(params["param_norm"].astype(float))] if len(params) else params
    first_loss = int(bad_loss["step"].min()) if len(bad_loss) else None
    # non-finite values that never reached a loss are no finding: GradScaler's skipped
    # steps (never recorded), additive -inf masks; only persistent NaN gradients count
    grad_steps = sorted(bad_grad["step"].unique()) if len(bad_grad) else []
    if first_loss is None and len(grad_steps) <= t("transient_steps") and len(bad_param) == 0:
        return []
    candidates = [
        s
        for s in (
            first_loss,
            grad_steps[0] if grad_steps else None,
            int(bad_param["step"].min()) if len(bad_param) else None,
        )
        if s is not None
    ]
    first = min(candidates)
    train_nf = nf[nf["split"] == "train"]
    # places already non-finite on earlier steps whose loss was fine did not cause it
    earlier = train_nf[train_nf["step"] < first]
    harmless = set(zip(earlier["kind"], earlier["name"], strict=True))
    at = train_nf[train_nf["step"] == first]
    new = [(k, n) not in harmless for k, n in zip(at["kind"], at["name"], strict=True)]
    at = at.loc[np.array(new, dtype=bool)]
    causes: list[Cause] = []

    data_at = at[at["kind"].isin(["input", "target"])]
    if len(data_at):
        causes.append(_bad_input(catalogue, data_at, first))
    else:
        fell = _floorless(catalogue, train, first)
        diverged = (
            [fell]
            if fell is not None
            else _divergence(records, catalogue, train, first)
            or _blown_update(records, catalogue, first)
        )
        causes.extend(diverged)
        instab = _instability(
            catalogue, records, at, train_nf, bad_grad, bad_param, first, first_loss
        )
        if instab is not None:
            if diverged:  # the overflow is the end of the divergence, not its cause
                instab = dataclasses.replace(instab, confidence=instab.confidence - 0.3)
            causes.append(instab)
    if not causes:
        return []
    what = "loss" if first_loss == first else "values"
    return [
        catalogue.finding(
            SYMPTOM,
            "error",
            causes,
            step=first,
            evidence={
                "first_nonfinite_step": first,
                "first_nonfinite_loss_step": first_loss,
                "first_nonfinite_grad_step": grad_steps[0] if grad_steps else None,
                "first_seen_in": what,
                "nonfinite_rows": at.head(8).to_dict("records"),
            },
        )
    ]


def _bad_input(catalogue: Catalogue, rows: pd.DataFrame, step: int) -> Cause:
    def text(key: str, r: pd.Series) -> str:
        kind = "input" if r["kind"] == "input" else "target"
        return catalogue.text(
            SYMPTOM, "bad_input_data", f"{kind}_{key}", name=r["name"], value=_kind(r["value"])
        )

    row = rows.iloc[0]
    return catalogue.cause(
        SYMPTOM,
        "bad_input_data",
        confidence=0.95,
        module=None,
        step=step,
        where=text("where", row),
        value=_kind(row["value"]),
        parts="; ".join(text("part", r) for _, r in rows.iterrows()),
    )


def _floorless(catalogue: Catalogue, train: pd.DataFrame, first: int) -> Cause | None:
    """The loss fell below zero, without a floor, until it overflowed: a log-likelihood
    without its minus reaches `log(0)` by making the right answers ever less likely."""
    before = train[train["step"] < first].groupby("step")["value"].mean()
    fall = floorless(before.to_numpy(dtype=float), catalogue, settled_check=False)
    if fall is None:
        return None
    evidence = catalogue.text(
        SYMPTOM,
        "loss_unbounded_below",
        "fell",
        step=first,
        start=num(fall.start),
        end=num(fall.end),
        steps=len(before),
    )
    return catalogue.cause(
        SYMPTOM,
        "loss_unbounded_below",
        confidence=0.9,
        evidence=evidence,
        step=first,
        loss_start=num(float(before.iloc[0])),
        loss_end=num(float(before.iloc[-1])),
    )


def _divergence(
    records: Records, catalogue: Catalogue, train: pd.DataFrame, first: int
) -> list[Cause]:
    """lr_too_high / exploding_gradient when the run was blowing up before the NaN."""
    before = train[train["step"] < first].groupby("step")["value"].mean()
    dyn = dynamics(records, before=first)
    if len(before) < 2 or dyn is None:
        return []
    start = min(float(before.iloc[0]), float(before.iloc[:3].median()))
    peak = float(before.max())
    rose = start > 0 and peak > catalogue.threshold(SYMPTOM, "rise_ratio") * start
    grew = dyn.growth_orders >= catalogue.threshold(SYMPTOM, "growth_orders")
    if not (rose or grew):
        return []
    fields = dict(
        loss_start=num(start),
        loss_peak=num(peak),
        ratio=num(dyn.early_ratio),
        lr=num(dyn.lr)
        if np.isfinite(dyn.lr)
        else catalogue.text(SYMPTOM, "lr_too_high", "lr_unknown"),
        grad_start=num(dyn.grad_start),
        grad_max=num(dyn.grad_max),
    )
    # the two causes of `diverging`, under this symptom: "lr_too_high", "exploding_gradient"
    causes = divergence_causes(catalogue, SYMPTOM, dyn, loss_fields=fields, step=first)
    lead = catalogue.text(SYMPTOM, None, "diverged_first", step=first, **fields)
    # a divergence that came first explains the NaN better than the op that overflowed
    return [
        dataclasses.replace(
            c, evidence=f"{lead}; {c.evidence}", confidence=min(0.95, c.confidence + 0.1)
        )
        for c in causes
    ]


def _blown_update(records: Records, catalogue: Catalogue, first: int) -> list[Cause]:
    """One optimizer step that replaced the weights (update/param ratio of about 1 or more)
    on the sampled step just before the first NaN/Inf: too soon for a divergence to show
    in the loss, yet the overflow that followed is its doing, not an op dividing by zero.
    A first loss far above a uniform guess says the gradients were huge from the start
    (the init): `exploding_gradient` first; else the step size: `lr_too_high` first."""
    p = records.params
    if p.empty:
        return []
    p = p[p["has_grad"].astype(bool) & (p["step"] < first)]
    # an Inf norm is finite values overflowing the float32 sum of squares: kept (huge)
    p = p[~(np.isnan(p["grad_norm"]) | np.isnan(p["param_norm"]) | np.isnan(p["update_norm"]))]
    if p.empty:
        return []
    last = p[p["step"] == p["step"].max()]
    prev = int(last["step"].iloc[0])
    # the norms are read after the step: an update that replaced the weights is about as
    # large as the weights it left
    weights = float((last["param_norm"] ** 2).sum() ** 0.5)
    update = float((last["update_norm"] ** 2).sum() ** 0.5)
    ratio = update / weights if weights > 0 and np.isfinite(update) else np.inf
    if not ratio >= catalogue.threshold(SYMPTOM, "blown_ratio"):
        return []
    grad = float((last["grad_norm"] ** 2).sum() ** 0.5)
    lr = (
        float(records.steps.loc[records.steps["step"] == prev, "lr"].iloc[0])
        if len(records.steps)
        else np.nan
    )
    info = records.meta.get("initial_loss") or {}
    expected = _initial_loss.expected_initial_loss(info) if info else None
    value = info.get("value")
    high_init = (
        expected is not None
        and value is not None
        and np.isfinite(value)
        and value > catalogue.threshold(SYMPTOM, "blown_init_ratio") * expected
    )
    fields = dict(
        prev=prev,
        ratio=num(ratio),
        grad=num(grad),
        update=num(update),
        lr=num(lr) if np.isfinite(lr) else catalogue.text(SYMPTOM, "lr_too_high", "lr_unknown"),
    )
    init = (
        catalogue.text(
            SYMPTOM,
            None,
            "blown_init",
            loss=info.get("loss"),
            value=num(value),
            expected=num(expected),
        )
        if high_init
        else ""
    )
    evidence = catalogue.text(SYMPTOM, None, "blown_evidence", step=first, init=init, **fields)
    causes = []
    for cause_id, conf in (
        ("exploding_gradient", 0.85 if high_init else 0.5),
        ("lr_too_high", 0.6 if high_init else 0.85),
    ):
        cause = catalogue.cause(
            SYMPTOM,
            cause_id,
            confidence=conf,
            evidence=evidence,
            step=prev,
            onset=prev,
            loss_start="?",
            loss_peak="?",
            grad_start=num(grad),
            grad_max=num(grad),
            **fields,
        )
        causes.append(
            dataclasses.replace(
                cause,
                first_check=catalogue.text(SYMPTOM, None, "blown_check", step=first, **fields),
            )
        )
    return causes


def _instability(
    catalogue: Catalogue,
    records: Records,
    at: pd.DataFrame,
    train_nf: pd.DataFrame,
    bad_grad: pd.DataFrame,
    bad_param: pd.DataFrame,
    first: int,
    first_loss: int | None,
) -> Cause | None:
    outputs = at[at["kind"] == "output"].sort_values("order")
    modules = records.meta.get("modules", {})

    def text(key: str, **fields: Any) -> str:
        return catalogue.text(SYMPTOM, "numerical_instability", key, step=first, **fields)

    if len(outputs):
        row = outputs.iloc[0]
        name = str(row["name"])
        fed = at[(at["kind"] == "module_input") & (at["name"] == name)]
        value = _kind(row["value"])
        case = "output"
        if len(fed):
            # its input was already bad: the op that made it ran in the parent's own
            # forward, between submodule calls (e.g. `torch.log(h)` in `forward`)
            name = name.rpartition(".")[0] if name else ""
            value = _kind(fed.iloc[0]["value"])
            case = "forward"
        shown = f"{_shown(catalogue, name)}{_type(modules, name)}"
        masked = _masked_rows(catalogue, records, name, shown, first)
        if masked is not None:
            return masked
        return catalogue.cause(
            SYMPTOM,
            "numerical_instability",
            confidence=0.8,
            evidence=text(f"{case}_evidence", output=row["name"], shown=shown, value=value),
            module=name or None,
            step=first,
            where=text(f"{case}_where"),
        )
    if first_loss == first:  # the forward was finite and the loss was not: it made it
        return _loss_instability(catalogue, records, train_nf, first)
    grads = bad_grad[bad_grad["step"] == first]
    if len(grads):
        # backward runs from the output: the last parameter (in model order) whose
        # gradient is non-finite is the nearest to where it was produced
        row = grads.iloc[-1]
        return catalogue.cause(
            SYMPTOM,
            "numerical_instability",
            confidence=0.7,
            evidence=text("gradient_evidence", param=row["param"], count=len(grads)),
            module=str(row["module"]) or None,
            step=first,
            where=text("gradient_where", param=row["param"]),
        )
    params = bad_param[bad_param["step"] == first]
    if len(params):
        row = params.iloc[0]
        return catalogue.cause(
            SYMPTOM,
            "numerical_instability",
            confidence=0.6,
            evidence=text("update_evidence", param=row["param"]),
            module=str(row["module"]) or None,
            step=first,
            where=text("update_where", param=row["param"]),
        )
    return _loss_instability(catalogue, records, train_nf, first)


def _masked_rows(
    catalogue: Catalogue, records: Records, name: str, shown: str, first: int
) -> Cause | None:
    """The NaN came out of an attention layer some of whose query rows had every key
    masked (`meta["attention_empty_rows"]`, from the hand-written attention probe): the
    softmax of a row of only -inf is NaN. The generic guards (clamp a log, add an eps)
    are not the fix; the mask is."""
    empty = (records.meta.get("attention_empty_rows") or {}).get(name)
    if not isinstance(empty, dict) or empty.get("step", first) > first:
        return None

    def text(key: str) -> str:
        return catalogue.text(
            SYMPTOM, "numerical_instability", key, step=first, module=name, shown=shown,
            rows=empty.get("rows"), of=empty.get("of"),
            inverted=catalogue.text(SYMPTOM, "numerical_instability", "masked_inverted")
            if empty.get("inverted_causal") else "",
        )  # fmt: skip

    cause = catalogue.cause(
        SYMPTOM,
        "numerical_instability",
        confidence=0.9,
        evidence=text("masked_evidence"),
        module=name or None,
        step=first,
        where=text("masked_where"),
    )
    # where the mask is passed: a `masked_fill` of the user's own, or a module's argument
    check = MASK_CHECKS.get(str(empty.get("source")), "masked_check")
    return dataclasses.replace(cause, first_check=text(check), fix_attempt=text("masked_fix"))


def _loss_instability(
    catalogue: Catalogue, records: Records, train_nf: pd.DataFrame, first: int
) -> Cause:
    steps = records.steps
    looked = bool(steps.loc[steps["step"] == first, "sampled"].astype(bool).any())

    def text(key: str, **fields: Any) -> str:
        return catalogue.text(SYMPTOM, "numerical_instability", key, step=first, **fields)

    seen = ""
    if not looked:
        later = train_nf[(train_nf["kind"] == "output") & (train_nf["step"] > first)]
        if len(later):
            row = later.iloc[0]
            seen_step = int(row["step"])
            # weights NaN by then (recorded after each sampled step's update): the output
            # may only carry them, not name where the first NaN came from
            params = records.params
            spoilt = params[
                (params["step"] >= first)
                & (params["step"] <= seen_step)
                & np.isnan(params["param_norm"].astype(float))
            ]
            key = "unsampled_seen_weights" if len(spoilt) else "unsampled_seen"
            seen = text(key, shown=_shown(catalogue, row["name"]), seen_step=seen_step)
    case = "loss" if looked else "unsampled"
    return catalogue.cause(
        SYMPTOM,
        "numerical_instability",
        confidence=0.5,
        evidence=text(f"{case}_evidence", seen=seen),
        module=None,
        step=first,
        where=text(f"{case}_where"),
    )


def _shown(catalogue: Catalogue, name: str) -> str:
    if name == "":
        return catalogue.text(SYMPTOM, "numerical_instability", "model_forward")
    return f"`{name}`"


def _type(modules: dict[str, Any], name: str) -> str:
    mtype = modules.get(name, {}).get("type")
    return f" ({mtype})" if mtype else ""


def _kind(value: float) -> str:
    """What the tensor's sum says it held: NaN (0/0, inf - inf) or +-Inf (log 0, x/0)."""
    v = float(value)
    return "NaN" if v != v else ("+Inf" if v > 0 else "-Inf")
