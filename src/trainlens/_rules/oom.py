"""oom: an out-of-memory error in forward or backward, or graphs kept alive across steps.

`batch_too_large` reads the exception (`meta["exception"]`: the innermost module whose
forward raised, the bytes the failed allocation asked for, parsed from the message), the
memory state at the end (`meta["memory"]`, written by the memory probe: what was
available, whether the error struck in backward, a meta-device estimate of the failing
module's outputs) and the shape trace (`shapes`: output bytes per module and batch).

Which module's backward was running is estimated without any backward hook: backward
visits modules in reverse forward order, so when gradients had been reset (the usual
`zero_grad()`, which sets them to None) the failing module is the last one in forward
order whose parameters had not received a gradient yet. Among parameter-free modules
next to it, the one whose activation has exactly the failed allocation's size wins
(backward allocates gradients shaped like the activations).

`graph_retained_across_steps` reads the `memory` table: per step the memory curve and
how many earlier steps' autograd graphs were still alive. The same cause caught at its
first step: `backward()` raised "backward through the graph a second time" and the graph
it ran into reaches the model's outputs of an earlier step (`meta["memory"]
["freed_graph"]`, walked by the memory probe from the failing pass's roots).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from .._catalogue import Catalogue
from .._finding import Cause, Finding
from .._format import human_bytes
from .._hookspecs import hookimpl
from .._records import Records
from ._common import exception_info, is_oom, module_attrs, shape_str

SYMPTOM = "oom"
#: the causes this rule decides (checked by tests/test_catalogue.py)
CAUSES = frozenset({"batch_too_large", "graph_retained_across_steps"})

_UNITS = {"b": 1, "bytes": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "pb": 1e15}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50})
_SIZE = r"([\d.]+)\s*(bytes|[KMGTP]i?B|B)\b"
_REQUESTED = re.compile(r"tried to allocate " + _SIZE, re.I)
# CUDA: "... of which 1.23 GiB is free" (torch >= 2.1) or "...; 3.44 MiB free;" (older)
_FREE = re.compile(_SIZE + r"(?: is)? free", re.I)
_DTYPE_BYTES = {"float64": 8, "int64": 8, "complex64": 8, "float16": 2, "bfloat16": 2}
_DTYPE_BYTES.update({"int16": 2, "int8": 1, "uint8": 1, "bool": 1})
#: module types whose models take sequences (a sequence length can be cut)
#: the memory curves the probe records, each with its own label in the recipe
_MEMORY_KINDS = ("cuda_allocated", "cpu_heap")
_SEQUENCE_TYPES = {
    "Embedding", "LSTM", "GRU", "RNN", "MultiheadAttention", "Transformer",
    "TransformerEncoderLayer", "TransformerDecoderLayer",
}  # fmt: skip


@hookimpl
def trainlens_diagnose(records: Records, catalogue: Catalogue) -> list[Finding]:
    exc = exception_info(records)
    freed = _freed_graph_finding(records, catalogue, exc)
    if freed is not None:
        return [freed]
    oom = exc is not None and is_oom(exc)
    causes: list[Cause] = []
    evidence: dict[str, Any] = {}
    retained = _retained_cause(records, catalogue, evidence, oom)
    # an OOM in optimizer.step (its state for huge parameters) is not about the batch
    if oom and exc.get("phase") != "step":
        causes.append(_batch_cause(records, catalogue, exc, evidence, retained is not None))
    if retained is not None:
        causes.append(retained)
    if not causes:
        return []
    return [catalogue.finding(SYMPTOM, "error" if oom else "warning", causes, evidence=evidence)]


# --- batch_too_large ---------------------------------------------------------------------
def _batch_cause(
    records: Records,
    catalogue: Catalogue,
    exc: dict[str, Any],
    evidence: dict[str, Any],
    retained: bool,
) -> Cause:
    message = str(exc.get("message", ""))
    mem = records.meta.get("memory") or {}
    facts = mem.get("oom") or {}
    acts = activations(records)
    requested = parse_bytes(_REQUESTED, message)
    in_backward = bool(facts.get("in_backward")) or exc.get("phase") == "backward"
    phase = "backward" if in_backward else exc.get("phase") or "forward"
    batch = _batch_size(exc, mem, acts, in_backward)

    estimate = facts.get("estimate") or {}
    if in_backward:
        module = backward_module(acts, facts.get("grad_arrived") or {}, requested)
    else:
        module = exc.get("module")
    in_model = module in records.meta.get("modules", {})
    module_type = (records.meta.get("modules", {}).get(module) or {}).get("type") or (
        exc.get("module_type") if module == exc.get("module") else None
    )
    module_type = module_type or "?"

    # the failing module's own activation: a meta-device estimate, else the allocation
    seen = acts[acts["module"] == module] if module is not None else acts.iloc[0:0]
    if estimate.get("output_bytes") and batch:
        mod_batch_bytes = float(estimate["output_bytes"])
        mod_shape = (estimate.get("outputs") or [None])[0]
    elif not seen.empty:
        mod_batch_bytes = float(seen["output_bytes"].iloc[-1])
        mod_shape = json.loads(seen["outputs"].iloc[-1])[0] if seen["outputs"].iloc[-1] else None
    elif (rule := shape_rule(module_type, module_attrs(records, module), exc)) is not None:
        mod_shape, mod_batch_bytes = rule
    else:
        mod_batch_bytes = float(requested or 0)
        mod_shape = None
    mod_per_sample = mod_batch_bytes / batch if batch else math.nan

    # the whole forward: every leaf module's outputs, per sample
    others = acts[acts["module"] != module]
    first_forward = not in_backward and seen.empty
    forward_per_sample = float(others["per_sample"].sum()) + (
        mod_per_sample
        if (first_forward or not seen.empty) and mod_per_sample == mod_per_sample
        else 0.0
    )
    if forward_per_sample == 0 and requested and batch:
        forward_per_sample = requested / batch

    biggest = _biggest(others, module, mod_shape, mod_per_sample, mod_batch_bytes)

    available = mem.get("available_bytes")
    if available is None:
        available = parse_bytes(_FREE, message)
    safety = catalogue.threshold(SYMPTOM, "safety_margin", "batch_too_large")
    factor = catalogue.threshold(SYMPTOM, "training_factor", "batch_too_large")
    need_per_sample = forward_per_sample * factor
    fit = None
    if available is not None and need_per_sample > 0:
        fit = int(available * safety // need_per_sample)
    inconsistent = fit is not None and batch is not None and fit >= batch
    guess = fit is None or inconsistent  # no trustworthy estimate: halve and retry
    batch_fit = max(1, (batch or 2) // 2) if guess else max(1, fit)
    accumulate = max(1, math.ceil((batch or batch_fit) / batch_fit))

    def text(name: str, **fields: Any) -> str:
        return catalogue.text(SYMPTOM, "batch_too_large", name, **fields)

    seq_len = _sequence_length(records, mem)
    sequence_fix = ""
    seq_fit = None
    if seq_len and batch and available is not None and need_per_sample > 0 and not inconsistent:
        seq_fit = int(seq_len * available * safety // (need_per_sample * batch))
        if 1 <= seq_fit < seq_len:
            sequence_fix = text("sequence_fix", batch=batch, seq_len=seq_len, seq_fit=seq_fit)

    shown = "(model)" if module == "" else module
    the_model = text("the_model")
    where = (
        text("module", shown=shown, module_type=module_type) if module is not None else the_model
    )
    during = text("during_backward" if in_backward else "during_forward")
    sizes = dict(
        where=where,
        during=during,
        per_sample=human(mod_per_sample),
        batch_bytes=human(mod_batch_bytes),
        batch=batch if batch else "?",
    )
    # the OOM struck before the forward ended: the forward's total is a lower bound
    need = text(
        "need_first_forward" if first_forward else "need",
        shape=f" {shape_str(mod_shape)}" if mod_shape else "",
        forward=human(forward_per_sample),
        training=human(need_per_sample),
        factor=f"{factor:g}",
        **sizes,
    )
    if available is not None:
        avail_txt = text("available", available=human(available), source=_memory_source(text, mem))
    else:
        avail_txt = text("available_unknown")
    if requested:
        avail_txt = f"{avail_txt} {text('requested', requested=human(requested))}"
    # one plan, told the same way by the summary, the first check and the fix
    plan = "guess" if guess else ("fits" if fit >= 1 else "none")

    story = {
        "batch_fit": batch_fit,
        "accumulate": accumulate,
        "batch": batch if batch else text("current_batch"),
        "sequence_fix": sequence_fix,
        "margin": f"{1 - safety:.0%}",
        "fit": fit,
        "module": shown if module is not None else the_model,
        "times": f"{need_per_sample / available:,.0f}x" if plan == "none" else "",
        "per_sample": human(need_per_sample),
        "output_shape": shape_str(mod_shape) if mod_shape else "?",
        "input_shape": shape_str((exc.get("inputs") or [None])[0]) if exc.get("inputs") else "?",
        "input_hint": _input_hint(text, mem),
    }
    if plan == "guess":
        verdict = text("unknown_verdict") if fit is None else text("guess_verdict", **story)
    else:
        verdict = text(f"{plan}_verdict", **story)
    first_fix = text(f"{plan}_fix", **story)
    wide = _output_layer(records)
    chunked_loss = text("chunked_loss", output_layer=wide[0], width=wide[1]) if wide else ""
    rows = [
        f"`{b['module']}` {shape_str(b['shape']) if b['shape'] else ''} {human(b['per_sample'])}"
        for b in biggest
    ]
    biggest_txt = text("biggest", activations="; ".join(rows))
    confidence = 0.5 if retained or inconsistent else 0.9
    summary = text(
        "summary",
        available=human(available) if available is not None else "?",
        plan=text(f"{plan}_summary", **story),
        **sizes,
    )
    evidence.update(
        {
            "phase": phase,
            "requested_bytes": requested,
            "available_bytes": available,
            "memory": {k: v for k, v in mem.items() if k not in ("oom", "model_input")},
            "batch": batch,
            "batch_plan": plan,  # fits | none (not one sample fits) | guess (halve)
            "batch_fit": None if plan == "none" else batch_fit,
            "accumulation_steps": None if plan == "none" else accumulate,
            "module_bytes_per_sample": _round(mod_per_sample),
            "forward_bytes_per_sample": _round(forward_per_sample),
            "training_bytes_per_sample": _round(need_per_sample),
            "biggest_activations": biggest,
            "sequence_length": seq_len,
            "sequence_length_fit": seq_fit,
        }
    )
    return catalogue.cause(
        SYMPTOM,
        "batch_too_large",
        confidence=confidence,
        evidence=summary,
        module=module if in_model else None,
        step=exc.get("step"),
        need=need,
        available=avail_txt,
        verdict=verdict,
        biggest=biggest_txt,
        first_fix=first_fix,
        chunked_loss=chunked_loss,
    )


def activations(records: Records) -> pd.DataFrame:
    """Leaf modules of the latest training forward: output bytes and bytes per sample."""
    df = records.shapes
    modules = records.meta.get("modules", {})
    if df.empty:
        return pd.DataFrame(columns=[*df.columns, "per_sample", "input_bytes"])
    df = df[df["module"].map(lambda m: (modules.get(m) or {}).get("leaf", False))]
    train = df[df["split"] == "train"]
    df = train if not train.empty else df
    df = df.sort_values("step").groupby("module", sort=False).tail(1)
    df = df.sort_values("call", na_position="last")
    batch = pd.to_numeric(df["batch"], errors="coerce")
    df = df.assign(
        per_sample=(df["output_bytes"] / batch).where(batch > 0, df["output_bytes"]),
        input_bytes=[_json_bytes(i, d) for i, d in zip(df["inputs"], df["dtypes"], strict=True)],
    )
    return df.reset_index(drop=True)


def backward_module(
    acts: pd.DataFrame, grad_arrived: dict[str, bool], requested: float | None
) -> str | None:
    """The module whose backward was running (see the module docstring for how)."""
    if acts.empty:
        return None
    order = list(acts["module"])
    with_params = [i for i, m in enumerate(order) if m in grad_arrived]
    arrived = [grad_arrived[order[i]] for i in with_params]
    lo, hi = 0, len(order)  # candidate range [lo, hi)
    if with_params and any(arrived) and not all(arrived):
        # the last parameter module without a gradient, and the free modules after it
        k = max(i for i in with_params if not grad_arrived[order[i]])
        nxt = [i for i in with_params if i > k]
        lo, hi = k, (nxt[0] if nxt else len(order))
    elif with_params and not any(arrived):
        lo = with_params[-1]  # backward stopped before the last parameter module finished
    if requested:
        cand = acts.iloc[lo:hi]
        match = cand[(cand["output_bytes"] == requested) | (cand["input_bytes"] == requested)]
        if not match.empty:
            return str(match["module"].iloc[-1])
    if with_params and not all(arrived):
        # no size to match: the parameter-free module backward reached first, else the
        # parameter module itself (an estimate either way: both ran in this window)
        return order[hi - 1] if hi - 1 > lo and order[hi - 1] not in grad_arrived else order[lo]
    return None


#: layers whose output has the shape of their input
_SAME_SHAPE = {
    "ReLU", "GELU", "SiLU", "Tanh", "Sigmoid", "Dropout", "LayerNorm", "Softmax",
    "LogSoftmax", "LeakyReLU", "BatchNorm1d", "BatchNorm2d", "GroupNorm", "Identity",
}  # fmt: skip


def shape_rule(
    module_type: str, attrs: dict[str, Any], exc: dict[str, Any]
) -> tuple[list[int], float] | None:
    """The failing layer's output from its input and configuration: (shape, bytes)."""
    inputs, dtypes = exc.get("inputs") or [], exc.get("dtypes") or []
    if not inputs or not inputs[0]:
        return None
    x = list(inputs[0])
    dtype = dtypes[0] if dtypes else "float32"
    if module_type == "Linear" and isinstance(attrs.get("out_features"), int):
        out, dtype = [*x[:-1], attrs["out_features"]], dtype
    elif module_type == "Embedding" and isinstance(attrs.get("embedding_dim"), int):
        out, dtype = [*x, attrs["embedding_dim"]], "float32"
    elif module_type in _SAME_SHAPE:
        out = x
    else:
        return None
    return out, float(math.prod(out) * _DTYPE_BYTES.get(dtype, 4))


def _batch_size(
    exc: dict[str, Any], mem: dict[str, Any], acts: pd.DataFrame, in_backward: bool
) -> int | None:
    inputs = exc.get("inputs") or []
    if not in_backward and inputs and inputs[0]:
        return int(inputs[0][0])
    shape = (mem.get("model_input") or {}).get("shape")
    if shape:
        return int(shape[0])
    batches = pd.to_numeric(acts.get("batch", pd.Series(dtype=float)), errors="coerce").dropna()
    return int(batches.iloc[-1]) if not batches.empty else None


def _sequence_length(records: Records, mem: dict[str, Any]) -> int | None:
    """[batch, seq] token ids, or a model with sequence layers fed [batch, seq, ...]."""
    model_input = mem.get("model_input") or {}
    shape, dtype = model_input.get("shape") or [], model_input.get("dtype") or ""
    if len(shape) < 2:
        return None
    integer = dtype.startswith(("int", "uint"))
    if integer and len(shape) == 2:
        return int(shape[1])
    types = {m.get("type") for m in records.meta.get("modules", {}).values()}
    if types & _SEQUENCE_TYPES and len(shape) >= 3:
        return int(shape[1])
    return None


def _biggest(
    others: pd.DataFrame,
    module: str | None,
    shape: list[int] | None,
    per_sample: float,
    batch_bytes: float,
) -> list[dict[str, Any]]:
    rows = [
        {
            "module": "(model)" if r["module"] == "" else r["module"],
            "shape": (json.loads(r["outputs"]) or [None])[0],
            "per_sample": float(r["per_sample"]),
            "batch_bytes": float(r["output_bytes"]),
        }
        for _, r in others.iterrows()
    ]
    if module is not None and per_sample == per_sample:
        rows.append(
            {
                "module": "(model)" if module == "" else module,
                "shape": shape,
                "per_sample": per_sample,
                "batch_bytes": batch_bytes,
            }
        )
    rows.sort(key=lambda r: -r["per_sample"])
    return [{**r, "per_sample": _round(r["per_sample"])} for r in rows[:3]]


def _output_layer(records: Records) -> tuple[str, int] | None:
    """The widest Linear of the model, when wide enough to be a vocabulary projection."""
    widest = None
    for name, m in records.meta.get("modules", {}).items():
        out = (m.get("attrs") or {}).get("out_features")
        if m.get("type") != "Linear" or not isinstance(out, int):
            continue
        if widest is None or out > widest[1]:
            widest = (name, out)
    if widest is None or widest[1] < 1024:
        return None
    return widest


def _memory_source(text: Callable[..., str], mem: dict[str, Any]) -> str:
    """Where the available memory was read (`text`: the batch_too_large texts)."""
    if mem.get("kind") == "cuda":
        return text(
            "source_cuda",
            device=mem.get("device", "cuda"),
            free=human(mem.get("free_bytes")),
            total=human(mem.get("total_bytes")),
        )
    if mem.get("kind") == "cpu":
        return text("source_cpu", total=human(mem.get("total_bytes")))
    return text("source_message")


def _input_hint(text: Callable[..., str], mem: dict[str, Any]) -> str:
    shape = (mem.get("model_input") or {}).get("shape")
    return text("input_hint", shape=shape_str(shape)) if shape else text("input_hint_unknown")


# --- graph_retained_across_steps -----------------------------------------------------------
def _retained_cause(
    records: Records, catalogue: Catalogue, evidence: dict[str, Any], oom: bool
) -> Cause | None:
    df = records.memory
    if df.empty:
        return None
    df = df.sort_values("step")
    count = pd.to_numeric(df["retained_graphs"], errors="coerce").fillna(0)
    oldest = pd.to_numeric(df["oldest_retained_step"], errors="coerce")
    need = catalogue.threshold(SYMPTOM, "min_retained_graphs")
    age = catalogue.threshold(SYMPTOM, "retained_age_steps")
    hit = df[(count >= need) & (df["step"] - oldest >= age)]
    if hit.empty:
        return None
    start = int(oldest[hit.index[0]])
    last = df.iloc[-1]
    kind = str(last["kind"])
    # one curve, of one reading (a CPU run switches from the heap to RSS on a slow heap)
    curve = df[(df["step"] >= start) & (df["kind"].astype(str) == kind)]
    values = pd.to_numeric(curve["memory_bytes"], errors="coerce")
    ok = values.notna()
    growth = math.nan
    if ok.sum() >= 3:
        growth = float(np.polyfit(curve["step"][ok].astype(float), values[ok].astype(float), 1)[0])

    def text(name: str, **fields: Any) -> str:
        return catalogue.text(SYMPTOM, "graph_retained_across_steps", name, **fields)

    n_alive = int(count.iloc[-1])
    # the probe counts graphs up to 64: at the cap, at least that many
    alive = text("at_least", count=n_alive) if n_alive >= 64 else str(n_alive)
    retained = text("retained", alive=alive, step=int(last["step"]), start=start)
    climbs = growth == growth and growth > 0
    if ok.sum() >= 3:
        v0, v1 = float(values[ok].iloc[0]), float(values[ok].iloc[-1])
        retained += text(
            "curve",
            label=text(f"label_{kind}" if kind in _MEMORY_KINDS else "label_rss"),
            start=human(v0),
            start_step=int(curve["step"][ok].iloc[0]),
            end=human(v1),
            end_step=int(curve["step"][ok].iloc[-1]),
            growth=human(growth) if growth == growth else "?",
        )
        per_forward = float(activations(records)["output_bytes"].sum())
        if climbs and per_forward > 0 and growth >= 0.5 * per_forward:
            retained += text("saved_tensors", per_forward=human(per_forward))
        room = (records.meta.get("memory") or {}).get("available_bytes")
        if climbs and room and not oom:
            retained += text("room", room=human(room), steps=int(room // growth))
        if not climbs:
            retained = f"{retained} {text('flat')}"
    evidence.update(
        {
            "retained_graphs": n_alive,
            "retained_since_step": start,
            "memory_growth_per_step": _round(growth),
            "memory_kind": kind,
        }
    )
    summary = f"{retained} {text('then_oom')}" if oom else retained
    return catalogue.cause(
        SYMPTOM,
        "graph_retained_across_steps",
        confidence=(0.95 if oom else 0.9) if climbs else 0.75,
        evidence=summary,
        step=start,
        retained=retained,
        start=start,
        growth_per_step=human(growth) if growth == growth else "?",
    )


def _freed_graph_finding(
    records: Records, catalogue: Catalogue, exc: dict[str, Any] | None
) -> Finding | None:
    """`backward()` raised because it ran into saved tensors an earlier backward pass freed,
    and this step's graph reaches the model's outputs of an earlier step: what carried
    them over is the bug (no `.detach()` between steps), not the missing `retain_graph`
    the message suggests. A pass that reached only this step's graph (two losses sharing
    one forward, a GAN's generator output without `.detach()`) is not this cause."""
    if not exc or exc.get("phase") not in (None, "backward"):
        return None
    facts = (records.meta.get("memory") or {}).get("freed_graph") or {}
    step = facts.get("step")
    earlier = [s for s in facts.get("graph_steps") or [] if step is not None and s < step]
    if not earlier:
        return None
    origin = max(earlier)  # the step the carried tensor comes from (older ones hang off it)

    def text(name: str) -> str:
        return catalogue.text(
            SYMPTOM, "graph_retained_across_steps", name, step=step, origin=origin
        )

    cause = catalogue.cause(
        SYMPTOM,
        "graph_retained_across_steps",
        confidence=0.9,
        evidence=text("freed_evidence"),
        step=origin,
        onset=step,
    )
    cause = dataclasses.replace(
        cause, first_check=text("freed_check"), fix_attempt=text("freed_fix")
    )
    return catalogue.finding(
        SYMPTOM,
        "error",
        [cause],
        evidence={
            "exception": str(exc.get("message"))[:500],
            "failed_at_step": step,
            "graph_from_steps": earlier[-8:],
        },
    )


# --- helpers -------------------------------------------------------------------------------
def parse_bytes(pattern: re.Pattern[str], message: str) -> float | None:
    m = pattern.search(message)
    if m is None:
        return None
    unit = _UNITS.get(m.group(2).lower(), 1)
    return float(m.group(1)) * unit


def human(n: float | None) -> str:
    return "?" if n is None or n != n else human_bytes(n)


def _json_bytes(inputs: str, dtypes: str) -> float:
    shapes = json.loads(inputs)
    in_dtypes = (json.loads(dtypes) or [[]])[0]
    return float(
        sum(
            math.prod(s) * _DTYPE_BYTES.get(d, 4)
            for s, d in zip(shapes, in_dtypes + ["float32"] * len(shapes), strict=False)
        )
    )


def _round(x: float) -> float | None:
    return None if x != x else float(round(x, 1))
