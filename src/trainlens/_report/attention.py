"""attention.png and the Attention section of drill.md, where attention was observed.

The picture is the attention input/output diagram of one layer (the one a finding names,
else the first observed): Q, K, V and output shapes, the heat map of one head's weights
for one sample, and the normalised entropy of every head over training.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from .._format import markdown_table, num, shape_str
from .._hookspecs import hookimpl
from .._io import atomic_write_bytes
from .._records import Records

FILENAME = "attention.png"


@hookimpl
def trainlens_artifacts(run_dir: Path, drill: dict[str, Any], records: Records) -> list[str]:
    att = records.attention
    if att.empty or not (att["rows"] > 0).any():
        # nothing was observed (or only rows with a single allowed key); a reused run dir
        # must not keep an earlier run's picture beside this run's drill
        (Path(run_dir) / FILENAME).unlink(missing_ok=True)
        return []
    layer = focus_layer(drill, records)
    png = render_png(records, layer, _finding_note(drill, layer))
    atomic_write_bytes(Path(run_dir) / FILENAME, png)
    return [FILENAME]


@hookimpl
def trainlens_report_sections(drill: dict[str, Any], records: Records) -> list[tuple[str, str]]:
    table = layer_summary(records)
    if table.empty:
        return []
    body = markdown_table(list(table.columns), table.itertuples(index=False))
    layer = focus_layer(drill, records)
    body += (
        "\n\nEntropy is the mean row entropy divided by log(keys the query may see): "
        "1 = uniform, 0 = one-hot; rows with a single allowed key are left out."
        f"\n\n![Attention of {layer}: Q/K/V and output shapes, one head's weights for "
        f"one sample, normalised entropy per head over training (the table above in "
        f"numbers)]({FILENAME})"
    )
    return [("Attention", body)]


def layer_summary(records: Records) -> pd.DataFrame:
    att = records.attention
    if att.empty:
        return pd.DataFrame()
    att = att[att["rows"] > 0]
    layers = records.attention_layers.set_index("module")
    rows = []
    for module, df in att.groupby("module", sort=False):
        per_step = df.groupby("step")[["entropy_norm", "max_weight"]].mean()
        first, last = per_step.iloc[0], per_step.iloc[-1]
        info = layers.loc[module] if module in layers.index else None
        rows.append(
            {
                "layer": module or "(model)",
                "source": info["source"] if info is not None else "-",
                "Q": _shape(info, "q_shape"),
                "K": _shape(info, "k_shape"),
                "V": _shape(info, "v_shape"),
                "output": _shape(info, "out_shape"),
                "heads": int(df["head"].nunique()),
                "mask": (info["mask"] if info is not None else None) or "-",
                "entropy first → last": f"{first['entropy_norm']:.3f} → {last['entropy_norm']:.3f}",
                "max weight last": num(last["max_weight"]),
            }
        )
    return pd.DataFrame(rows)


def focus_layer(drill: dict[str, Any], records: Records) -> str:
    att = records.attention
    observed = list(dict.fromkeys(att.loc[att["rows"] > 0, "module"]))
    for f in drill.get("findings", []):
        if f.get("symptom") == "confusing_attention":
            name = (f.get("evidence") or {}).get("observed_name")
            if name in observed:
                return name
    return observed[0]


def _finding_note(drill: dict[str, Any], layer: str) -> str:
    for f in drill.get("findings", []):
        observed = (f.get("evidence") or {}).get("observed_name")
        if f.get("symptom") == "confusing_attention" and observed == layer:
            return f" — {f['severity']}: {f['likely_cause']}"
    return ""


def render_png(records: Records, layer: str, note: str = "") -> bytes:
    # the object API with an Agg canvas: no global backend switch in the user's process
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_diag, ax_map, ax_ent = fig.subplots(1, 3, width_ratios=[1.1, 1, 1.2])
    layers = records.attention_layers
    info = layers[layers["module"] == layer]
    info = info.iloc[0] if not info.empty else None
    _diagram(ax_diag, info, layer)
    _heat_map(fig, ax_map, records, layer)
    _entropy(ax_ent, records, layer)
    fig.suptitle(f"attention of {layer or '(model)'}{note}", fontsize=12)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _diagram(ax: Any, info: Any, layer: str) -> None:
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    box = {"boxstyle": "round,pad=0.4", "fc": "#e8f0fb", "ec": "#3a6ea5"}
    op = {"boxstyle": "round,pad=0.4", "fc": "#fff4e0", "ec": "#c07a00"}
    arrow = {"arrowstyle": "->", "color": "#555"}
    q, k, v = (_shape(info, c) for c in ("q_shape", "k_shape", "v_shape"))
    out = _shape(info, "out_shape")
    scale = info["scale"] if info is not None else None
    scale_txt = f"· {num(float(scale))}" if scale is not None and scale == scale else "· scale"
    mask = (info["mask"] if info is not None else None) or "no mask"
    source = info["source"] if info is not None else "log_attention"
    ax.text(0.15, 0.88, f"Q {q}", ha="center", bbox=box, fontsize=9)
    ax.text(0.5, 0.88, f"K {k}", ha="center", bbox=box, fontsize=9)
    ax.text(0.85, 0.88, f"V {v}", ha="center", bbox=box, fontsize=9)
    ax.text(0.33, 0.62, f"softmax(Q Kᵀ {scale_txt})\n{mask}", ha="center", bbox=op, fontsize=9)
    ax.text(0.5, 0.36, "weights @ V", ha="center", bbox=op, fontsize=9)
    ax.text(0.5, 0.1, f"output {out}", ha="center", bbox=box, fontsize=9)
    for x0, y0, x1, y1 in (
        (0.15, 0.85, 0.28, 0.69),
        (0.5, 0.85, 0.38, 0.69),
        (0.33, 0.58, 0.45, 0.41),
        (0.85, 0.85, 0.55, 0.41),
        (0.5, 0.32, 0.5, 0.16),
    ):
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=arrow)
    ax.set_title(f"{source}: inputs and output", fontsize=10)


def _heat_map(fig: Any, ax: Any, records: Records, layer: str) -> None:
    maps = records.attention_maps
    maps = maps[maps["module"] == layer]
    if maps.empty:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no weights kept", ha="center")
        return
    row = maps.sort_values("step").iloc[-1]
    weights = json.loads(row["weights"])
    im = ax.imshow(weights, cmap="viridis", vmin=0, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    ax.set_title(
        f"weights, head {row['head']}, sample {row['sample']}, step {row['step']}", fontsize=10
    )


def _entropy(ax: Any, records: Records, layer: str) -> None:
    att = records.attention
    att = att[(att["module"] == layer) & (att["rows"] > 0)]
    per = att.groupby(["step", "head"])["entropy_norm"].mean().unstack("head")
    for head in per.columns:
        ax.plot(per.index, per[head], marker="." if len(per) < 30 else None, label=f"head {head}")
    ax.set_ylim(-0.02, 1.05)
    ax.axhline(1.0, color="#999", lw=0.8, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("row entropy / log(allowed keys)")
    ax.set_title("normalised entropy per head (1 = uniform, 0 = one-hot)", fontsize=10)
    if len(per.columns) <= 8:
        ax.legend(fontsize=8, loc="best")


def _shape(info: Any, column: str) -> str:
    if info is None:
        return "?"
    value = info[column]
    shape = json.loads(value) if isinstance(value, str) else None
    return shape_str(shape) if shape is not None else "?"
