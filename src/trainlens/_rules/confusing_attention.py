"""confusing_attention: attention saturated from the start, or still uniform after training.

Evidence is the `attention` table: per layer, head and sampled step, the mean row entropy
normalised by log(number of keys the query may see) and the mean max weight. Rows with a
single allowed key (the first rows of a causal mask) are left out by the probe, so causal
attention is not mistaken for saturated attention.
"""

from __future__ import annotations

import functools
from typing import Any

import pandas as pd

from .._catalogue import Catalogue
from .._finding import Finding
from .._hookspecs import hookimpl
from .._records import Records
from ._common import model_module as _model_module
from ._common import names as _names
from ._common import num

SYMPTOM = "confusing_attention"
#: the causes this rule decides (checked by tests/test_catalogue.py)
CAUSES = frozenset({"attention_saturated", "attention_uniform", "softmax_over_queries"})


@hookimpl
def trainlens_diagnose(records: Records, catalogue: Catalogue) -> list[Finding]:
    found = _softmax_over_queries(records, catalogue)
    att = records.attention
    if att.empty:
        return found
    att = att[att["rows"] > 0]
    order = list(dict.fromkeys(records.attention_layers["module"].tolist()))
    order += [m for m in dict.fromkeys(att["module"]) if m not in order]
    saturated, uniform = [], []
    for module in order:
        df = att[att["module"] == module]
        if df.empty:
            continue
        sat = _saturated(df, catalogue)
        if sat is None:
            sat = _saturated_by_scale(df, catalogue, _layer(records, module))
        if sat is not None:
            saturated.append((module, sat))
            continue
        uni = _uniform(df, records, catalogue)
        if uni is not None:
            uniform.append((module, uni))
    findings = found
    if saturated:
        findings.append(_saturated_finding(records, catalogue, saturated))
    if uniform:
        findings.append(_uniform_finding(records, catalogue, uniform))
    findings.extend(qk_without_gradient(records, catalogue, skip={m for m, _ in uniform}))
    return findings


# --- a softmax over the queries ------------------------------------------------------------
def _softmax_over_queries(records: Records, catalogue: Catalogue) -> list[Finding]:
    """Hand-written attention of a sequence over itself whose softmax runs over the queries
    (`meta["attention_softmax_axis"]`, from `_probes/_manual_attention.py`): a query's
    weights over the keys do not sum to 1, and with a causal mask each early key's column
    spreads over the later queries, so a position sees the ones after it."""
    seen = records.meta.get("attention_softmax_axis") or {}
    if not seen:
        return []
    cause = "softmax_over_queries"
    causes = []
    for name, info in seen.items():
        module = _model_module(records, name)
        causes.append(
            catalogue.cause(
                SYMPTOM,
                cause,
                confidence=0.9,
                evidence=catalogue.text(
                    SYMPTOM,
                    cause,
                    "seen",
                    shown=f"`{name}`" if name else catalogue.text(SYMPTOM, cause, "model"),
                    shape=info.get("shape"),
                    dim=info.get("dim"),
                    step=info.get("step"),
                ),
                module=module,
                step=info.get("step"),
                onset=info.get("step"),
                where=f"`{name}`" if name else catalogue.text(SYMPTOM, cause, "model"),
                dim=info.get("dim"),
            )
        )
    return [catalogue.finding(SYMPTOM, "error", causes, evidence={"softmax_axis": seen})]


# --- query/key projections that cannot learn (issue 18 §4; the `rules` branch) ----------
def qk_without_gradient(
    records: Records,
    catalogue: Catalogue,
    skip: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[Finding]:
    """`attention_uniform` where the query and key projections got exactly zero gradient.

    Modules in `skip` (already reported uniform from their rows) are left out. A warning
    like every `attention_uniform`: the model may still learn through the values.

    Reads `meta["attention_qk_grad"]` (`_probes/_qkgrad.py`, `nn.MultiheadAttention`):
    when both parts stay exactly zero on every sampled step, the attention pattern cannot
    change whatever the loss does (zero q and k: each one's gradient is the other), so
    this holds whether or not the loss falls.
    """
    cause = "attention_uniform"
    seen = records.meta.get("attention_qk_grad") or {}
    need = catalogue.threshold(SYMPTOM, "uniform_min_observations", cause)
    stuck = {
        m: s
        for m, s in seen.items()
        if m not in skip
        and s.get("sampled_steps", 0) >= need
        and s["q_grad_max"] == 0
        and s["k_grad_max"] == 0
    }
    if not stuck:
        return []
    module, s = next(iter(stuck.items()))
    att = records.attention
    att = att[(att["module"] == module) & (att["rows"] > 0)] if not att.empty else att
    entropy = float(att["entropy_norm"].mean()) if not att.empty else None
    layer = _layer(records, module)
    dim = int(layer.get("heads") or 0) * int(layer.get("head_dim") or 0)
    loss = _loss_drop(records)
    fields = dict(
        steps=s["sampled_steps"],
        rows=(
            catalogue.text(SYMPTOM, cause, "qk_rows", entropy=_ent(entropy))
            if entropy is not None
            else ""
        ),
        also=_also(catalogue, list(stuck)[1:]),
    )
    found = catalogue.cause(
        SYMPTOM,
        cause,
        confidence=0.9,
        evidence=catalogue.text(SYMPTOM, cause, "qk_zero", module=module, **fields),
        module=_model_module(records, module),
        evidence_short=catalogue.text(SYMPTOM, cause, "qk_short", **fields),
        qk_params=f"{module}.in_proj_weight.grad[:{2 * dim or '2*embed_dim'}].abs().max()",
        scale=_scale_text(catalogue, layer),
        loss_drop=(
            f"{num(loss[0])} -> {num(loss[1])}" if loss is not None else _not_recorded(catalogue)
        ),
        uniform_entropy=num(catalogue.threshold(SYMPTOM, "uniform_entropy", cause)),
        **fields,
    )
    return [catalogue.finding(SYMPTOM, "error", [found], evidence={"qk_without_gradient": stuck})]


def _per_head(df: pd.DataFrame) -> pd.DataFrame:
    return df.groupby("head")[["entropy_norm", "max_weight"]].mean()


# --- saturated ----------------------------------------------------------------------------
def _saturated(df: pd.DataFrame, catalogue: Catalogue) -> dict[str, Any] | None:
    cause = "attention_saturated"
    first_step = int(df["step"].min())
    heads = _per_head(df[df["step"] == first_step])
    sharp = (heads["entropy_norm"] < catalogue.threshold(SYMPTOM, "saturated_entropy", cause)) & (
        heads["max_weight"] > catalogue.threshold(SYMPTOM, "saturated_max_weight", cause)
    )
    return _sharp_heads(df, heads, sharp, first_step, catalogue)


def _sharp_heads(
    df: pd.DataFrame, heads: pd.DataFrame, sharp: pd.Series, first_step: int, catalogue: Catalogue
) -> dict[str, Any] | None:
    """The numbers of a saturated layer, when enough of its heads are sharp from the start."""
    if sharp.mean() < catalogue.threshold(SYMPTOM, "saturated_head_frac", "attention_saturated"):
        return None
    last_step = int(df["step"].max())
    last = _per_head(df[df["step"] == last_step])
    return {
        "step": first_step,
        "heads": len(heads),
        "sharp_heads": int(sharp.sum()),
        "entropy": float(heads.loc[sharp, "entropy_norm"].mean()),
        "max_weight": float(heads.loc[sharp, "max_weight"].mean()),
        "last_step": last_step,
        "last_entropy": float(last["entropy_norm"].mean()),
    }


def _saturated_by_scale(
    df: pd.DataFrame, catalogue: Catalogue, layer: dict[str, Any]
) -> dict[str, Any] | None:
    """Sharp, if not one-hot, from the first step, with logits scaled far above
    1/sqrt(head_dim) (no scaling, or multiplied where it should divide): the recorded
    scale says why, so a looser entropy limit holds. A pretrained checkpoint's sharp heads
    come with the textbook scale and are not judged by this."""
    cause = "attention_saturated"
    scale, dim = layer.get("scale"), layer.get("head_dim")
    if scale is None or dim is None or scale != scale or dim != dim or dim <= 0:
        return None
    if float(scale) < catalogue.threshold(SYMPTOM, "scale_off_factor", cause) * dim**-0.5:
        return None
    first_step = int(df["step"].min())
    heads = _per_head(df[df["step"] == first_step])
    limit = catalogue.threshold(SYMPTOM, "saturated_entropy_overscaled", cause)
    sharp = heads["entropy_norm"] < limit
    found = _sharp_heads(df, heads, sharp, first_step, catalogue)
    return None if found is None else {**found, "overscaled": True}


def _saturated_finding(
    records: Records, catalogue: Catalogue, layers: list[tuple[str, dict[str, Any]]]
) -> Finding:
    module, s = layers[0]
    text = functools.partial(catalogue.text, SYMPTOM, "attention_saturated")

    every = s["sharp_heads"] == s["heads"]
    evidence = text(
        "saturated",
        module=module,
        entropy=_ent(s["entropy"]),
        step=s["step"],
        which=text("all_heads") if every else text("some_heads", sharp_heads=s["sharp_heads"]),
        heads=s["heads"],
        max_weight=num(s["max_weight"]),
        sharp=text("sharper_than_init" if s.get("overscaled") else "one_hot"),
    )
    if s["last_step"] != s["step"]:
        evidence += text("still", entropy=_ent(s["last_entropy"]), step=s["last_step"])
    evidence += _scale_note(catalogue, _layer(records, module), too="large")
    evidence += _also(catalogue, [m for m, _ in layers[1:]])
    cause = catalogue.cause(
        SYMPTOM,
        "attention_saturated",
        # by the scale alone the rows are not yet one-hot: a model that drops the scale by
        # design and compensates in its init (T5) can start sharp and be healthy
        confidence=0.6 if s.get("overscaled") else 0.85 if s["sharp_heads"] == s["heads"] else 0.7,
        evidence=evidence,
        module=_model_module(records, module),
        step=s["step"],
        evidence_short=text("short", entropy=_ent(s["entropy"]), step=s["step"]),
        scale=_scale_text(catalogue, _layer(records, module)),
    )
    return catalogue.finding(
        SYMPTOM,
        "error",
        [cause],
        evidence={"saturated_layers": {m: v for m, v in layers}, "observed_name": module},
    )


# --- uniform --------------------------------------------------------------------------------
def _uniform(df: pd.DataFrame, records: Records, catalogue: Catalogue) -> dict[str, Any] | None:
    cause = "attention_uniform"
    steps = sorted(df["step"].unique())
    run_steps = int(records.meta.get("steps") or 0)
    if run_steps < catalogue.threshold(SYMPTOM, "uniform_min_steps", cause):
        return None
    if len(steps) < catalogue.threshold(SYMPTOM, "uniform_min_observations", cause):
        return None
    drop = _loss_drop(records)
    if (
        drop is None
        or drop[1] > catalogue.threshold(SYMPTOM, "trained_loss_ratio", cause) * drop[0]
    ):
        return None  # the model did not train: a flat run is another rule's business
    end = _per_head(df[df["step"].isin(steps[-3:])])
    limit = catalogue.threshold(SYMPTOM, "uniform_entropy", cause)
    if end["entropy_norm"].min() < limit:
        return None
    start = _per_head(df[df["step"] == steps[0]])
    return {
        "step": int(steps[-1]),
        "first_step": int(steps[0]),
        "heads": len(end),
        "entropy": float(end["entropy_norm"].mean()),
        "min_entropy": float(end["entropy_norm"].min()),
        "first_entropy": float(start["entropy_norm"].mean()),
        "loss_first": drop[0],
        "loss_last": drop[1],
        "limit": float(limit),
    }


def _uniform_finding(
    records: Records, catalogue: Catalogue, layers: list[tuple[str, dict[str, Any]]]
) -> Finding:
    module, u = layers[0]
    text = functools.partial(catalogue.text, SYMPTOM, "attention_uniform")

    loss_drop = text("loss_fell", first=num(u["loss_first"]), last=num(u["loss_last"]))
    evidence = text(
        "uniform",
        module=module,
        entropy=_ent(u["entropy"]),
        step=u["step"],
        heads=u["heads"],
        min_entropy=_ent(u["min_entropy"]),
        first_entropy=_ent(u["first_entropy"]),
        first_step=u["first_step"],
        loss_drop=loss_drop,
    )
    layer = _layer(records, module)
    evidence += _scale_note(catalogue, layer, too="small")
    evidence += _also(catalogue, [m for m, _ in layers[1:]])
    if layer.get("source") == "MultiheadAttention":
        dim = int(layer.get("heads") or 0) * int(layer.get("head_dim") or 0)
        qk = f"{module}.in_proj_weight.grad[:{2 * dim}].norm()"
    else:
        params = [
            n for n, p in records.meta.get("params", {}).items() if p.get("module") == module
        ] or [n for n in records.meta.get("params", {}) if n.startswith(f"{module}.")]
        qk = ", ".join(f"{n}.grad.norm()" for n in params[:2]) or "q.grad / k.grad"
    cause = catalogue.cause(
        SYMPTOM,
        "attention_uniform",
        confidence=0.75,
        evidence=evidence,
        module=_model_module(records, module),
        step=u["step"],
        evidence_short=text("short", entropy=_ent(u["entropy"]), step=u["step"]),
        qk_params=qk,
        scale=_scale_text(catalogue, layer),
        loss_drop=loss_drop,
        uniform_entropy=num(u["limit"]),
    )
    return catalogue.finding(
        SYMPTOM,
        "warning",
        [cause],
        evidence={"uniform_layers": {m: v for m, v in layers}, "observed_name": module},
    )


# --- helpers ----------------------------------------------------------------------------------
def _loss_drop(records: Records) -> tuple[float, float] | None:
    loss = records.train_loss().dropna()
    if len(loss) < 10:
        return None
    k = max(1, len(loss) // 10)
    return float(loss.iloc[:k].mean()), float(loss.iloc[-k:].mean())


def _layer(records: Records, module: str) -> dict[str, Any]:
    layers = records.attention_layers
    rows = layers[layers["module"] == module]
    return rows.iloc[0].to_dict() if not rows.empty else {}


def _scale_text(catalogue: Catalogue, layer: dict[str, Any]) -> str:
    scale = layer.get("scale")
    if scale is not None and scale == scale:
        return num(float(scale))
    return _not_recorded(catalogue)


def _not_recorded(catalogue: Catalogue) -> str:
    return catalogue.text(SYMPTOM, None, "not_recorded")


def _also(catalogue: Catalogue, modules: list[str]) -> str:
    """The other layers with the same finding, if any."""
    return catalogue.text(SYMPTOM, None, "also", names=_names(modules)) if modules else ""


def _scale_note(catalogue: Catalogue, layer: dict[str, Any], too: str) -> str:
    """The logit scale against 1/sqrt(head_dim) when it is off by more than 4x."""
    scale, dim = layer.get("scale"), layer.get("head_dim")
    if scale is None or dim is None or scale != scale or dim != dim or dim <= 0:
        return ""
    usual = float(dim) ** -0.5
    off = float(scale) / usual
    if (too == "large" and off > 4) or (too == "small" and off < 0.25):
        return catalogue.text(
            SYMPTOM, None, "scale_note", scale=num(float(scale)), usual=num(usual)
        )
    return ""


def _ent(x: float) -> str:
    """Entropies live in [0, 1]: three decimals, so 0.9996 does not read as 1."""
    return num(x) if x < 0.01 else f"{x:.3f}"
