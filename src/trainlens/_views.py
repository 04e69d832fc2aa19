"""Shared read-only views of the records, for the rules and the report.

One definition of each fact several readers need: per-parameter statistics over the
sampled steps, the leaf activations, which names are modules of the model, how a list of
names is shown, whether an exception is an out-of-memory error. Views only read
`Records` (DataFrames and meta) and return new frames or plain values; nothing here
decides what is wrong (that is a rule's job) or how it is worded (the recipes').
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from ._records import Records

__all__ = [
    "OOM_MESSAGE",
    "attribute_path",
    "constant_baseline",
    "exception_info",
    "is_oom",
    "json_float",
    "leaf_activations",
    "model_module",
    "module_attrs",
    "names",
    "param_stats",
]

#: the messages of out-of-memory errors that are not `torch.OutOfMemoryError`
OOM_MESSAGE = re.compile(r"out of memory|can't allocate memory|cannot allocate memory", re.I)

#: columns of `param_stats`, so an empty view still has them
PARAM_STAT_COLUMNS = (
    "module", "rows", "has_grad", "grad_pos", "grad_zero", "grad", "rel_grad", "ratio",
    "update_rows", "changed", "drifted", "norm", "in_optimizer", "numel", "ndim",
)  # fmt: skip


def exception_info(records: Records) -> dict[str, Any] | None:
    return records.meta.get("exception")


def is_oom(exc: dict[str, Any]) -> bool:
    return exc.get("type") == "OutOfMemoryError" or bool(OOM_MESSAGE.search(exc.get("message", "")))


def module_attrs(records: Records, name: str | None) -> dict[str, Any]:
    if name is None:
        return {}
    return records.meta.get("modules", {}).get(name, {}).get("attrs", {})


def model_module(records: Records, name: str | None) -> str | None:
    """SPEC: `module` is a dotted name of the model; anything else (a loss outside it, a
    `log_attention` label) is no module."""
    return name if name is not None and name in records.meta.get("modules", {}) else None


def names(items: list[str], limit: int = 4) -> str:
    """`a`, `b`, `c`, `d` and 3 more: a list of names short enough for one sentence."""
    shown = ", ".join(f"`{n}`" for n in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def attribute_path(name: str, root: str = "model") -> str:
    """How Python reaches a parameter or module by its dotted name: `0.weight` ->
    `model[0].weight` (an `nn.Sequential` or `nn.ModuleList` index is an item, not an
    attribute)."""
    out = root
    for part in name.split(".") if name else []:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def json_float(x: float) -> float | None:
    """6 significant digits, None for NaN/Inf (JSON has neither)."""
    x = float(x)
    return float(f"{x:.6g}") if math.isfinite(x) else None


def constant_baseline(records: Records) -> tuple[float, str, float] | None:
    """The training loss of the best constant prediction (class prior, mean target), as
    the loss probes recorded it: `(value, loss type, classes)`; `classes` is NaN for a
    regression loss. None when no loss recorded one."""
    li = records.table("loss_inputs")
    li = li[(li["split"] == "train") & li["baseline"].notna()]
    if li.empty:
        return None
    kind = li["type"].mode().iloc[0]
    li = li[li["type"] == kind]
    value = float(li["baseline"].median())
    if not math.isfinite(value) or value <= 0:
        return None
    return value, str(kind), float(li["classes"].median())


def step_weights(steps: pd.Series) -> dict[int, float]:
    """How many steps of the run each sampled step stands for: the gap to the next one
    (the last one counts as much as the gap before it)."""
    u = np.unique(steps.to_numpy())
    if len(u) < 2:
        return {int(s): 1.0 for s in u}
    gaps = np.diff(u).astype(float)
    return dict(zip(u.tolist(), [*gaps.tolist(), float(gaps[-1])], strict=True))


def weighted_medians(frame: pd.DataFrame, by: str, column: str, weight: str) -> pd.Series:
    """Per group of `by`: the median of `column` with each row counted `weight` times (an
    even split takes the middle of the two values, as a plain median does); NaN left out."""
    d = frame[[by, column, weight]].dropna(subset=[column])
    d = d.sort_values([by, column], kind="stable")
    groups = d.groupby(by, sort=False)
    cum = groups[weight].cumsum()
    half = groups[weight].transform("sum") / 2
    after = groups[column].shift(-1)
    middle = (cum == half) & after.notna()
    value = d[column].where(~middle, (d[column] + after) / 2)
    return value[cum >= half].groupby(d[by][cum >= half], sort=False).first()


def weighted_means(frame: pd.DataFrame, by: str, column: str, weight: str) -> pd.Series:
    """Per group of `by`: the mean of `column` weighted by `weight`; NaN left out."""
    v = frame[column].astype(float)
    w = frame[weight].where(v.notna(), 0.0)
    num = (v.fillna(0.0) * w).groupby(frame[by], sort=False).sum()
    den = w.groupby(frame[by], sort=False).sum()
    return num / den.where(den > 0)


def param_stats(records: Records) -> pd.DataFrame:
    """One row per tracked parameter (index: its name), in model order.

    Over the sampled steps: `rows` sampled, `has_grad` share of steps with a gradient,
    `grad_pos` share with a non-zero one, `grad_zero` every recorded gradient norm was
    exactly 0 (at least one recorded), `grad` median gradient norm, `rel_grad` median
    grad/param, `ratio` median update/param, `update_rows` steps with an update norm,
    `changed` share of those where the parameter moved, `drifted` its norm differs between
    sampled steps (also when something other than the watched optimizer's step moved it: a
    second optimizer, a hand-written update), `norm` last parameter norm; from the run's
    meta: `in_optimizer`, `numel`, `ndim`.
    """
    p = records.params
    meta_params: dict[str, dict[str, Any]] = records.meta.get("params", {})
    if p.empty:
        return pd.DataFrame(columns=list(PARAM_STAT_COLUMNS))
    p = p.assign(
        grad_pos=(p["grad_norm"] > 0) & p["has_grad"].astype(bool),
        grad_seen=p["grad_norm"].notna(),
        grad_zero=p["grad_norm"] == 0,
        ratio=p["update_norm"] / p["param_norm"].where(p["param_norm"] > 0),
        rel_grad=p["grad_norm"] / p["param_norm"].where(p["param_norm"] > 0),
        weight=p["step"].map(step_weights(p["step"])),
        moved=(p["update_norm"] > 0).where(p["update_norm"].notna()),
    )
    groups = p.groupby("param", sort=False)
    agg = groups.agg(
        module=("module", "first"),
        rows=("step", "size"),
        grad_seen=("grad_seen", "sum"),
        grad_zero=("grad_zero", "sum"),
        update_rows=("update_norm", "count"),
        low=("param_norm", "min"),
        high=("param_norm", "max"),
        norm=("param_norm", "last"),
    )
    # the norm of an unchanged tensor is taken by the same kernel each time: bit-identical
    agg["drifted"] = agg["high"] > agg["low"]
    # sampling thins out over a run: each row stands for the steps until the next
    # sampled one, so the medians and shares are those of the run, not of its first steps
    for column, source, how in (
        ("has_grad", "has_grad", weighted_means),
        ("grad_pos", "grad_pos", weighted_means),
        ("grad", "grad_norm", weighted_medians),
        ("rel_grad", "rel_grad", weighted_medians),
        ("ratio", "ratio", weighted_medians),
        ("changed", "moved", weighted_means),
    ):
        agg[column] = how(p, "param", source, "weight").reindex(agg.index)
    agg = agg[
        ["module", "rows", "has_grad", "grad_pos", "grad_seen", "grad_zero", "grad",
         "rel_grad", "ratio", "update_rows", "changed", "drifted", "norm"]
    ]  # fmt: skip
    agg["grad_zero"] = (agg["grad_zero"] == agg["grad_seen"]) & (agg["grad_seen"] > 0)
    agg = agg.drop(columns="grad_seen")
    agg["in_optimizer"] = [
        meta_params.get(n, {}).get("in_optimizer") is not False for n in agg.index
    ]
    agg["numel"] = [int(meta_params.get(n, {}).get("numel", 1)) for n in agg.index]
    agg["ndim"] = [len(meta_params.get(n, {}).get("shape") or []) for n in agg.index]
    order = {n: i for i, n in enumerate(meta_params)}
    return agg.loc[sorted(agg.index, key=lambda n: order.get(n, 1 << 30))]


def leaf_activations(records: Records, types: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The activation rows of leaf modules (of the given module types, if any)."""
    act = records.activations
    if types is not None:
        act = act[act["type"].isin(types)]
    leaves = {n for n, m in records.meta.get("modules", {}).items() if m.get("leaf")}
    return act[act["module"].isin(leaves)] if leaves else act


def input_outliers(
    records: Records, factor: float, max_share: float, min_sampled: int
) -> dict[str, Any] | None:
    """A few training input rows far off the scale of the rest (a unit mix-up, a missing
    value coded as 9999), from the `inputs` table: the largest |x| of some sampled batches
    is `factor` times or more that of a typical batch (the median of each batch's largest
    |x|), on at most `max_share` of them (more: the whole input is off scale). None when
    not so, or with fewer than `min_sampled` sampled training steps."""
    inputs = records.inputs
    if inputs.empty:
        return None
    train = inputs[inputs["split"].astype(str) == "train"]
    lo = pd.to_numeric(train["min"], errors="coerce").abs()
    hi = pd.to_numeric(train["max"], errors="coerce").abs()
    absmax = np.maximum(lo, hi).to_numpy(dtype=float)
    steps = train["step"].to_numpy()
    ok = np.isfinite(absmax)
    absmax, steps = absmax[ok], steps[ok]
    if len(absmax) < min_sampled:
        return None
    typical = float(np.median(absmax))
    if not typical > 0:
        return None
    far = absmax >= factor * typical
    if not far.any() or far.mean() > max_share:
        return None
    peak = float(absmax.max())
    return {
        "peak": peak,
        "hit": int(far.sum()),
        "sampled": len(absmax),
        "typical": typical,
        "factor": peak / typical,
        "first_step": int(steps[far][0]),
    }
