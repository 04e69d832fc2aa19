"""Built-in report sections: the shape trace and the per-layer gradient table.

Registered as a plugin like any other; each section is `(title, markdown)`.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from .._format import human_bytes, markdown_table, num
from .._hookspecs import hookimpl
from .._records import Records
from .._views import param_stats

#: a shape trace longer than this keeps its first rows (and the failing module)
MAX_ROWS = 200


@hookimpl
def trainlens_report_sections(drill: dict[str, Any], records: Records) -> list[tuple[str, str]]:
    sections = []
    trace = shape_trace(records)
    if not trace.empty:
        sections.append(("Shape trace", _table(trace)))
    layers = layer_table(records)
    if not layers.empty:
        sections.append(("Per-layer gradients and updates", _table(layers)))
    return sections


def shape_trace(records: Records) -> pd.DataFrame:
    """Each module once, in call order, with the shapes it first saw."""
    df = records.shapes
    if df.empty and not records.meta.get("exception"):
        return pd.DataFrame()
    counts = df.groupby("module").size()
    first = df.sort_values(["step"]).groupby("module", sort=False).head(1)
    first = first.sort_values("call", na_position="last")
    rows = []
    for _, r in first.head(MAX_ROWS).iterrows():
        ins, outs = json.loads(r["inputs"]), json.loads(r["outputs"])
        in_dt, out_dt = json.loads(r["dtypes"])
        batch = r["batch"]
        size = int(r["output_bytes"])
        per_sample = size / batch if batch == batch and batch else None
        more = int(counts[r["module"]]) - 1
        rows.append(
            {
                "module": r["module"] or "(model)",
                "type": r["type"],
                "input": _shapes(ins, in_dt),
                "output": _shapes(outs, out_dt) + (f" (+{more} other shapes)" if more else ""),
                "activation (batch)": human_bytes(size),
                "per sample": human_bytes(per_sample) if per_sample else "-",
            }
        )
    exc = records.meta.get("exception") or {}
    if exc.get("phase") == "forward" and exc.get("inputs") is not None:
        # an out-of-memory crash: the memory probe estimated the outputs on the meta device
        est = ((records.meta.get("memory") or {}).get("oom") or {}).get("estimate") or {}
        est_bytes, est_batch = est.get("output_bytes"), est.get("batch")
        rows.append(
            {
                "module": exc.get("module") or "(model)",
                "type": exc.get("module_type") or "?",
                "input": _shapes(exc["inputs"], exc.get("dtypes") or []),
                "output": (f"{_shapes(est['outputs'], [])} (would be) " if est else "")
                + f"raised {exc.get('type')}",
                "activation (batch)": human_bytes(est_bytes) if est_bytes else "-",
                "per sample": human_bytes(est_bytes / est_batch)
                if est_bytes and est_batch
                else "-",
            }
        )
    return pd.DataFrame(rows)


def layer_table(records: Records) -> pd.DataFrame:
    """Median gradient norm and update/param ratio per parameter over sampled steps."""
    stats = param_stats(records)
    if stats.empty:
        return pd.DataFrame()
    out = pd.DataFrame(
        {
            "parameter": stats.index,
            "grad norm (median)": stats["grad"].map(num).values,
            "param norm (last)": stats["norm"].map(num).values,
            "update/param (median)": stats["ratio"].map(num).values,
            "steps with grad": stats["has_grad"].map(lambda x: f"{x:.0%}").values,
        }
    )
    return out.head(MAX_ROWS)


def _shapes(shapes: list[list[int]], dtypes: list[str]) -> str:
    if not shapes:
        return "-"
    parts = [f"[{', '.join(map(str, s))}]" for s in shapes[:3]]
    dtype = dtypes[0] if dtypes and len(set(dtypes)) == 1 else ""
    more = f" +{len(shapes) - 3}" if len(shapes) > 3 else ""
    return " ".join(parts) + more + (f" {dtype}" if dtype and dtype != "float32" else "")


def _table(df: pd.DataFrame) -> str:
    return markdown_table(list(df.columns), df.itertuples(index=False))
