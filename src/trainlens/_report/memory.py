"""The memory section of drill.md: the per-step memory curve in a few numbers."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .._format import human_bytes
from .._hookspecs import hookimpl
from .._records import Records

_LABELS = {
    "cuda_allocated": "CUDA allocated memory",
    "cpu_heap": "CPU heap in use",
    "cpu_rss": "process RSS",
}


@hookimpl
def trainlens_report_sections(drill: dict[str, Any], records: Records) -> list[tuple[str, str]]:
    df = records.memory
    if not df.empty:  # one curve, of one reading: the last (a slow heap switches to RSS)
        df = df[df["kind"].astype(str) == str(df["kind"].iloc[-1])]
    values = pd.to_numeric(df["memory_bytes"], errors="coerce")
    if df.empty or values.isna().all():
        return []
    ok = df[values.notna()].assign(value=values[values.notna()])
    first, last = ok.iloc[0], ok.iloc[-1]
    peak = ok.loc[ok["value"].idxmax()]
    label = _LABELS.get(str(last["kind"]), str(last["kind"]))
    lines = [
        f"{label}, on sampled steps, at their first forward (`memory.parquet`): "
        f"{human_bytes(first['value'])} at step {int(first['step'])}, "
        f"{human_bytes(last['value'])} at step {int(last['step'])}, "
        f"peak {human_bytes(peak['value'])} at step {int(peak['step'])}.",
        "",
        f"Autograd graphs of earlier steps still alive at step {int(df['step'].iloc[-1])}: "
        f"{int(df['retained_graphs'].iloc[-1])} (a healthy loop: 0 or 1).",
    ]
    mem = records.meta.get("memory") or {}
    if mem.get("available_bytes") is not None:
        lines += ["", f"Available at the end of the run: {human_bytes(mem['available_bytes'])}."]
    return [("Memory", "\n".join(lines))]
