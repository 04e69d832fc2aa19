"""`curves.png`: train and val loss, gradient norm per layer and learning rate against step.

A picture must show the problem: the loss axis starts at 0 (a flat loss looks flat, not
like autoscaled noise), with the start level and the best constant prediction drawn as
references; the best validation step and the first non-finite step are marked on every
panel; a panel that carries nothing (a constant learning rate) is left out and said in a
title instead. Matplotlib with the Agg canvas directly (no pyplot state, no display).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._format import num
from .._hookspecs import hookimpl
from .._io import atomic_write_bytes
from .._records import Records
from .._views import constant_baseline

FILENAME = "curves.png"

#: more layers than this: the first, the last and evenly spaced ones between are drawn
MAX_GROUPS = 8

#: a loss spanning more than this factor is drawn on a log axis
LOG_SPAN = 100


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
    return [("Curves", f"![{curves_caption(records)}]({FILENAME})")]


def has_curves(records: Records) -> bool:
    return not records.losses.empty or not records.params.empty


def curves_caption(records: Records) -> str:
    """What the picture shows, in words (the alt text where the image cannot be shown)."""
    marks = loss_marks(records)
    parts = [
        loss_summary(name, s)
        for name, s in (("train loss", records.train_loss()), ("val loss", records.val_loss()))
        if len(s)
    ]
    if marks.baseline is not None:
        parts.append(f"best constant prediction {num(marks.baseline)} ({marks.baseline_what})")
    if marks.best_val_step is not None:
        parts.append(f"best validation at step {marks.best_val_step}")
    if marks.first_nonfinite_step is not None:
        parts.append(f"first non-finite value at step {marks.first_nonfinite_step}")
    return "Curves: " + ("; ".join(parts) if parts else "gradient norm per layer")


def loss_summary(name: str, s: pd.Series) -> str:
    s = s.astype(float)
    finite = s[np.isfinite(s.to_numpy())]
    if finite.empty:
        return f"{name} never finite"
    return (
        f"{name} {num(finite.iloc[0])} at step {finite.index[0]} to {num(finite.iloc[-1])} at "
        f"step {finite.index[-1]}"
    )


@dataclass(frozen=True)
class LossMarks:
    """The reference levels and steps every picture of a run marks."""

    start: float | None  # the first finite training loss
    baseline: float | None  # the loss of the best constant prediction
    baseline_what: str | None
    best_val_step: int | None
    first_nonfinite_step: int | None


def loss_marks(records: Records) -> LossMarks:
    train, val = records.train_loss().astype(float), records.val_loss().astype(float)
    finite_train = train[np.isfinite(train.to_numpy())]
    finite_val = val[np.isfinite(val.to_numpy())]
    baseline, what = constant_prediction_baseline(records)
    bad = [
        int(s.index[~np.isfinite(s.to_numpy())][0])
        for s in (train, val)
        if len(s) and not np.isfinite(s.to_numpy()).all()
    ]
    nonfinite = records.table("nonfinite")
    if not nonfinite.empty:
        bad.append(int(pd.to_numeric(nonfinite["step"]).min()))
    return LossMarks(
        start=float(finite_train.iloc[0]) if len(finite_train) else None,
        baseline=baseline,
        baseline_what=what,
        # with a single evaluation there is no "best" to choose
        best_val_step=int(finite_val.idxmin()) if len(finite_val) > 1 else None,
        first_nonfinite_step=min(bad) if bad else None,
    )


def constant_prediction_baseline(records: Records) -> tuple[float | None, str | None]:
    """The training loss of predicting a constant (class prior, mean target), if known."""
    found = constant_baseline(records)
    if found is None:
        return None, None
    value, kind, classes = found
    if kind == "MSELoss":
        return value, "the target variance: always predicting the mean"
    if classes == classes and classes >= 2:
        return value, f"the class prior over {int(classes)} classes"
    return value, "the class prior"


def grad_norm_by_group(records: Records) -> pd.DataFrame:
    """Gradient norm per layer (the module owning the parameters) and sampled step: the
    norm of its parameters' gradient norms, as if the layer were one tensor. Columns are in
    model order; past MAX_GROUPS the first, the last and evenly spaced layers between."""
    df = records.params
    if df.empty:
        return pd.DataFrame()
    df = df[df["grad_norm"].map(lambda v: v == v)]
    if df.empty:
        return pd.DataFrame()
    layer = df["param"].map(_layer_of)
    order = list(dict.fromkeys(layer))
    sq = (df["grad_norm"].astype(float) ** 2).groupby([df["step"], layer]).sum()
    wide = np.sqrt(sq).unstack()[order]
    if wide.shape[1] > MAX_GROUPS:
        keep = sorted({round(i) for i in np.linspace(0, len(order) - 1, MAX_GROUPS)})
        wide = wide[[order[i] for i in keep]]
        wide.attrs["layers"] = len(order)
    return wide


def _layer_of(param: str) -> str:
    """`encoder.layer.3.attention.query.weight` -> `encoder.layer.3.attention.query`;
    the model's own parameters (`weight` of a bare `nn.Linear`) -> `(model)`."""
    return param.rpartition(".")[0] or "(model)"


def curves_png(records: Records) -> bytes | None:
    if not has_curves(records):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    marks = loss_marks(records)
    grads = grad_norm_by_group(records)
    lr = records.steps["lr"].astype(float) if not records.steps.empty else pd.Series([])
    lr_known = lr.dropna()
    lr_varies = lr_known.nunique() > 1
    panels = 1 + (not grads.empty) + lr_varies
    fig = Figure(figsize=(8.5, 2.6 * panels + 0.5), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]

    ax = axes[0]
    drawn: list[float] = []
    for split, s, style in (
        ("train", records.train_loss(), "-"),
        ("val", records.val_loss(), "o-"),
    ):
        s = s.astype(float)
        finite = s[np.isfinite(s.to_numpy())]
        if len(finite):
            ax.plot(finite.index, finite.values, style, label=f"{split} loss", markersize=3)
            drawn += [float(finite.min()), float(finite.max())]
    log = bool(drawn) and min(drawn) > 0 and max(drawn) / min(drawn) > LOG_SPAN
    refs = []  # the reference levels: where the loss started, a constant guess's loss
    for value, color, linestyle, label in (
        (marks.start, "0.55", ":", "start level"),
        (marks.baseline, "tab:purple", "--", "best constant prediction"),
    ):
        if value is not None:
            refs.append(value)
            ax.axhline(
                value, color=color, linestyle=linestyle, linewidth=1, label=f"{label} {num(value)}"
            )
    if log:
        ax.set_yscale("log")
    elif drawn:
        # from 0, so that a loss that does not move looks like it does not move
        top = max(drawn + refs)
        bottom = min(0.0, min(drawn))
        ax.set_ylim(bottom, top + 0.08 * (top - bottom or 1.0))
    ax.set_ylabel("loss" + (" (log)" if log else ""))
    title = "loss" if drawn else "loss (no finite value recorded)"
    if len(lr_known) and not lr_varies:
        title += f"; learning rate {num(float(lr_known.iloc[0]))} throughout"
    ax.set_title(title, fontsize=10, loc="left")

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
        n = grads.attrs.get("layers")
        shown = f"{grads.shape[1]} of {n} layers: first, last, evenly between" if n else "layer"
        if ax.get_lines():  # every gradient zero (cleared before the step): no line, no legend
            ax.legend(
                fontsize=7,
                title=shown,
                title_fontsize=7,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                frameon=False,
            )
        ax.set_ylabel("grad norm")
        ax.set_title("gradient norm per layer (sampled steps)", fontsize=10, loc="left")
    if lr_varies:
        ax = axes[i]
        ax.plot(records.steps["step"], lr, color="tab:green")
        ax.set_ylabel("learning rate")
        ax.set_title("learning rate (first param group)", fontsize=10, loc="left")

    lines = [  # (step, colour, style, legend): on every panel, named once
        (marks.best_val_step, "tab:green", "-.", "best val"),
        (marks.first_nonfinite_step, "red", "--", "first non-finite"),
    ]
    for n, ax in enumerate(axes):
        for step, colour, style, what in lines:
            if step is not None:
                label = f"{what} (step {step})" if n == 0 else None
                ax.axvline(step, color=colour, linestyle=style, linewidth=1, label=label)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes[-1].set_xlabel("step")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
