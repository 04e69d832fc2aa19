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
from ._common import num
from .diverging import divergence_causes, dynamics

SYMPTOM = "non_finite"
#: the causes this rule decides (checked by tests/test_catalogue.py)
CAUSES = frozenset({"numerical_instability", "bad_input_data", "lr_too_high", "exploding_gradient"})


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
        diverged = _divergence(records, catalogue, train, first)
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
    row = rows.iloc[0]
    if row["kind"] == "input":
        where = f"the model's input ({row['name']})"
    else:
        where = f"the target passed to {row['name']}"
    parts = [
        (f"model input ({r['name']})" if r["kind"] == "input" else f"target of {r['name']}")
        + f": {_kind(r['value'])}"
        for _, r in rows.iterrows()
    ]
    return catalogue.cause(
        SYMPTOM,
        "bad_input_data",
        confidence=0.95,
        evidence=f"at step {step}, before any layer ran, {'; '.join(parts)}",
        module=None,
        step=step,
        where=where,
        value=_kind(row["value"]),
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
        lr=num(dyn.lr) if np.isfinite(dyn.lr) else "the current value",
        grad_start=num(dyn.grad_start),
        grad_max=num(dyn.grad_max),
    )
    # the two causes of `diverging`, under this symptom: "lr_too_high", "exploding_gradient"
    causes = divergence_causes(catalogue, SYMPTOM, dyn, loss_fields=fields, step=first)
    lead = (
        f"before the first NaN/Inf at step {first} the loss rose from {num(start)} to {num(peak)}; "
    )
    # a divergence that came first explains the NaN better than the op that overflowed
    return [
        dataclasses.replace(c, evidence=lead + c.evidence, confidence=min(0.95, c.confidence + 0.1))
        for c in causes
    ]


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
    if len(outputs):
        row = outputs.iloc[0]
        name = str(row["name"])
        fed = at[(at["kind"] == "module_input") & (at["name"] == name)]
        if len(fed):
            # its input was already bad: the op that made it ran in the parent's own
            # forward, between submodule calls (e.g. `torch.log(h)` in `forward`)
            name = name.rpartition(".")[0] if name else ""
            how = (
                f"at step {first} `{row['name']}` received an input already holding "
                f"{_kind(fed.iloc[0]['value'])} values from code in the forward of "
                f"{_shown(name)}{_type(modules, name)} between its submodules, while the "
                "model input and every module output before it were finite"
            )
            where = f"its forward turned a finite tensor non-finite at step {first}"
        else:
            how = (
                f"at step {first} the output of {_shown(name)}{_type(modules, name)} held "
                f"{_kind(row['value'])} values although its input, the model input and "
                "every module output before it were finite"
            )
            where = f"its output turned non-finite at step {first}"
        return catalogue.cause(
            SYMPTOM,
            "numerical_instability",
            confidence=0.8,
            evidence=how,
            module=name or None,
            step=first,
            where=where,
        )
    if first_loss == first:  # the forward was finite and the loss was not: it made it
        return _loss_instability(catalogue, records, train_nf, first)
    grads = bad_grad[bad_grad["step"] == first]
    if len(grads):
        # backward runs from the output: the last parameter (in model order) whose
        # gradient is non-finite is the nearest to where it was produced
        row = grads.iloc[-1]
        evidence = (
            f"at step {first} the gradient of `{row['param']}` was NaN "
            f"(NaN in {len(grads)} parameter(s)) while the forward activations and the "
            "loss were finite: the backward pass produced it (sqrt or norm at 0, "
            "division by a value near 0, pow with a negative base)"
        )
        return catalogue.cause(
            SYMPTOM,
            "numerical_instability",
            confidence=0.7,
            evidence=evidence,
            module=str(row["module"]) or None,
            step=first,
            where=f"the gradient of its parameter `{row['param']}` turned non-finite",
        )
    params = bad_param[bad_param["step"] == first]
    if len(params):
        row = params.iloc[0]
        return catalogue.cause(
            SYMPTOM,
            "numerical_instability",
            confidence=0.6,
            evidence=f"at step {first} parameter `{row['param']}` became non-finite in the "
            "optimizer update while its gradient was finite (optimizer eps of 0, a "
            "division by a zero second moment)",
            module=str(row["module"]) or None,
            step=first,
            where=f"the update of `{row['param']}` turned non-finite",
        )
    return _loss_instability(catalogue, records, train_nf, first)


def _loss_instability(
    catalogue: Catalogue, records: Records, train_nf: pd.DataFrame, first: int
) -> Cause:
    steps = records.steps
    looked = bool(steps.loc[steps["step"] == first, "sampled"].astype(bool).any())
    if looked:
        evidence = (
            f"the train loss turned non-finite at step {first} while the input, the targets "
            "and every module output were finite: the loss computation itself produced it "
            "(log of a zero probability, a division in a custom loss)"
        )
        where = "the loss function: its input is finite, so check what it computes"
    else:
        later = train_nf[(train_nf["kind"] == "output") & (train_nf["step"] > first)]
        seen = (
            f"; the first module output checked non-finite was "
            f"{_shown(later.iloc[0]['name'])} at step {int(later.iloc[0]['step'])}"
            if len(later)
            else ""
        )
        evidence = (
            f"the train loss turned non-finite at step {first} with finite input and "
            f"targets; step {first} was not a sampled step, so module outputs were not "
            f"checked there{seen}"
        )
        where = (
            "the step's forward pass; rerun with `trainlens.watch(..., sample_every=1)` "
            "so every step's module outputs are checked and the module is named"
        )
    return catalogue.cause(
        SYMPTOM,
        "numerical_instability",
        confidence=0.5,
        evidence=evidence,
        module=None,
        step=first,
        where=where,
    )


def _shown(name: str) -> str:
    return "the model's own forward (`model`)" if name == "" else f"`{name}`"


def _type(modules: dict[str, Any], name: str) -> str:
    mtype = modules.get(name, {}).get("type")
    return f" ({mtype})" if mtype else ""


def _kind(value: float) -> str:
    """What the tensor's sum says it held: NaN (0/0, inf - inf) or +-Inf (log 0, x/0)."""
    v = float(value)
    return "NaN" if v != v else ("+Inf" if v > 0 else "-Inf")
