"""`curves.png`: train and val loss, gradient norm per layer group and learning rate
against step. Matplotlib with the Agg canvas directly (no pyplot state, no display)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._hookspecs import hookimpl
from .._io import atomic_write_bytes
from .._records import Records

FILENAME = "curves.png"

#: more layer groups than this are drawn as the largest ones (by median gradient norm)
MAX_GROUPS = 8


@hookimpl
def trainlens_artifacts(run_dir: Path, drill: dict[str, Any], records: Records) -> list[str]:
    png = curves_png(records)
    if png is None:
        (Path(run_dir) / FILENAME).unlink(missing_ok=True)  # never a stale picture
        return []
    atomic_write_bytes(Path(run_dir) / FILENAME, png)
    return [FILENAME]


@hookimpl
def trainlens_report_sections(drill: dict[str, Any], records: Records) -> list[tuple[str, str]]:
    if not has_curves(records):
        return []
    return [
        (
            "Curves",
            f"![Train and val loss, gradient norm per layer group and learning rate against "
            f"step]({FILENAME})",
        )
    ]


def has_curves(records: Records) -> bool:
    return not records.losses.empty or not records.params.empty


def grad_norm_by_group(records: Records) -> pd.DataFrame:
    """Gradient norm per layer group (the top-level module) and sampled step: the norm of
    the group's parameter gradient norms, as if the group were one tensor."""
    df = records.params
    if df.empty:
        return pd.DataFrame()
    df = df[df["grad_norm"].map(lambda v: v == v)]
    group = df["param"].map(lambda p: p.split(".")[0] if "." in p else p)
    sq = (df["grad_norm"].astype(float) ** 2).groupby([df["step"], group]).sum()
    wide = np.sqrt(sq).unstack()
    if wide.shape[1] > MAX_GROUPS:
        wide = wide[wide.median().sort_values(ascending=False).index[:MAX_GROUPS]]
    return wide


def curves_png(records: Records) -> bytes | None:
    if not has_curves(records):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grads = grad_norm_by_group(records)
    lr = records.steps["lr"].astype(float) if not records.steps.empty else pd.Series([])
    lr_known = bool(lr.notna().any()) if len(lr) else False
    panels = 1 + (not grads.empty) + lr_known
    fig = Figure(figsize=(7, 2.3 * panels + 0.4), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]

    ax = axes[0]
    drawn: list[float] = []
    for split, s, style in (
        ("train", records.train_loss(), "-"),
        ("val", records.val_loss(), "o-"),
    ):
        s = s.astype(float)
        finite = s[s.map(math.isfinite)]
        if len(finite):
            ax.plot(finite.index, finite.values, style, label=f"{split} loss", markersize=3)
            drawn += [float(finite.min()), float(finite.max())]
        bad = s[~s.map(math.isfinite)]
        if len(bad):
            ax.axvline(bad.index[0], color="red", linestyle="--",
                       label=f"first non-finite {split} loss (step {bad.index[0]})")  # fmt: skip
    if drawn and min(drawn) > 0 and max(drawn) / min(drawn) > 100:
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.set_title("loss" if drawn else "loss (no finite value recorded)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)

    i = 1
    if not grads.empty:
        ax = axes[i]
        i += 1
        for name in grads.columns:
            col = grads[name].dropna()
            col = col[np.isfinite(col) & (col > 0)]
            if len(col):
                ax.plot(col.index, col.values, label=str(name), linewidth=1)
        if ax.get_lines():
            ax.set_yscale("log")
            ax.legend(fontsize=7, ncol=2, title="layer group", title_fontsize=7)
        ax.set_ylabel("grad norm")
        ax.set_title("gradient norm per layer group (sampled steps)")
    if lr_known:
        ax = axes[i]
        steps = records.steps["step"]
        ax.plot(steps, lr, color="tab:green")
        ax.set_ylabel("learning rate")
        ax.set_title("learning rate (first param group)")
    axes[-1].set_xlabel("step")
    fig.subplots_adjust(left=0.12, right=0.97, top=0.95, bottom=0.08, hspace=0.45)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
