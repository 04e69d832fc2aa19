"""Records: columnar buffers while a run goes, pandas DataFrames after it.

Probes append plain Python numbers (or small device tensors through `Deferred`, read back
in bulk); rules only ever see the DataFrames and the run's metadata. Tables and their
columns are declared here, in one place, so an empty table still has its columns and a
rule can rely on them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ._errors import RunDirError
from ._io import atomic_write_bytes, atomic_write_text

#: table name -> columns. A run directory holds one `<table>.parquet` per table.
TABLES: dict[str, tuple[str, ...]] = {
    # one row per completed step (an optimizer step, or a backward pass without optimizer)
    "steps": ("step", "time_s", "lr", "backward_passes", "sampled"),
    # every loss seen: nn loss modules called in the block and lens.log_loss(...)
    "losses": ("step", "split", "source", "value"),
    # per trainable parameter, on sampled steps; update_norm is |p_after - p_before|
    "params": ("step", "param", "module", "has_grad", "grad_norm", "param_norm", "update_norm"),
    # per module, each distinct input/output signature the first time it is seen
    "shapes": (
        "step",
        "call",
        "module",
        "type",
        "split",
        "inputs",
        "outputs",
        "dtypes",
        "output_bytes",
        "batch",
    ),
    # per leaf module output, on sampled training steps
    "activations": ("step", "module", "type", "zero_frac", "mean_abs", "max_abs"),
    # the model's first floating-point input, on sampled steps
    "inputs": ("step", "split", "mean", "std", "min", "max", "nonfinite_frac"),
    # one-off observations a probe made (a loss broadcasting its target, an exception, ...)
    "events": ("step", "kind", "module", "message", "data"),
    # CrossEntropy/NLL/MSE input and target on sampled steps: are the inputs already
    # probabilities (prob_dev = mean |row sum - 1|) or log-probabilities (logprob_dev =
    # mean |logsumexp(row)|); baseline = loss of the best constant prediction
    "loss_inputs": (
        "step",
        "split",
        "loss",
        "type",
        "classes",
        "min",
        "max",
        "prob_dev",
        "logprob_dev",
        "baseline",
    ),
    # sampled optimizer steps: the norm of the optimizer's `.grad`s before the step's first
    # backward pass adds to them (carried, 0 after zero_grad) and at `optimizer.step()`
    "grad_carry": ("step", "carried_norm", "step_norm", "carried_frac"),
}


class Table:
    """An append-only columnar buffer of Python values."""

    __slots__ = ("_data", "columns")

    def __init__(self, columns: Sequence[str]):
        self.columns = tuple(columns)
        self._data: list[list[Any]] = [[] for _ in self.columns]

    def append(self, *row: Any) -> None:
        for col, value in zip(self._data, row, strict=True):
            col.append(value)

    def extend(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self.append(*row)

    def __len__(self) -> int:
        return len(self._data[0])

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(dict(zip(self.columns, self._data, strict=True)))


class Deferred:
    """Device tensors of statistics, read back to the host in one transfer per flush.

    Reading a CUDA value forces a host-device synchronisation; collecting them here and
    flushing every few steps keeps the training loop asynchronous.
    """

    def __init__(self) -> None:
        self._items: list[tuple[Table, list[tuple[Any, ...]], torch.Tensor]] = []

    def add(self, table: Table, prefixes: list[tuple[Any, ...]], values: torch.Tensor) -> None:
        """`values` is `[len(prefixes), k]`: row i is `prefixes[i] + values[i]`."""
        self._items.append((table, prefixes, values.detach()))

    def __len__(self) -> int:
        return len(self._items)

    def flush(self) -> None:
        if not self._items:
            return
        items, self._items = self._items, []
        by_device: dict[torch.device, list[int]] = {}
        for i, (_, _, values) in enumerate(items):
            by_device.setdefault(values.device, []).append(i)
        host: dict[int, list[list[float]]] = {}
        for idx in by_device.values():
            flat = torch.cat([items[i][2].reshape(-1).to(torch.float64) for i in idx]).tolist()
            pos = 0
            for i in idx:
                n_rows, n_cols = items[i][2].shape
                host[i] = [flat[pos + r * n_cols : pos + (r + 1) * n_cols] for r in range(n_rows)]
                pos += n_rows * n_cols
        for i, (table, prefixes, _) in enumerate(items):
            for prefix, vals in zip(prefixes, host[i], strict=True):
                table.append(*prefix, *vals)


class Records:
    """What a run recorded: one DataFrame per table, plus the run's metadata.

    This is the only input of rules. Attribute access gives a table (`records.losses`);
    a table nobody wrote to is an empty frame with its declared columns.
    """

    def __init__(self, frames: dict[str, pd.DataFrame], meta: dict[str, Any]):
        self.frames = dict(frames)
        self.meta = meta

    def __getattr__(self, name: str) -> pd.DataFrame:
        if name.startswith("_") or name in ("frames", "meta"):
            raise AttributeError(name)
        return self.table(name)

    def table(self, name: str) -> pd.DataFrame:
        if name in self.frames:
            return self.frames[name]
        if name in TABLES:
            return pd.DataFrame({c: [] for c in TABLES[name]})
        raise AttributeError(f"no record table {name!r}; known: {sorted(TABLES)}")

    def train_loss(self) -> pd.Series:
        """Mean training loss per step (several losses in one step are averaged)."""
        return self._loss("train")

    def val_loss(self) -> pd.Series:
        return self._loss("val")

    def _loss(self, split: str) -> pd.Series:
        df = self.losses
        df = df[df["split"] == split]
        if df.empty:
            return pd.Series(dtype=float, name=split)
        return df.groupby("step")["value"].mean().rename(split)

    # --- persistence -----------------------------------------------------------------
    def save(self, run_dir: Path) -> None:
        for name, frame in self.frames.items():
            atomic_write_bytes(run_dir / f"{name}.parquet", _parquet_bytes(frame))
        atomic_write_text(run_dir / "run.json", json.dumps(self.meta, indent=2, default=str))

    @classmethod
    def load(cls, run_dir: Path) -> Records:
        meta_path = run_dir / "run.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(
                f"{run_dir} has no run.json: not a trainlens run directory "
                "(point at the folder that holds drill.json)"
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{meta_path} is unreadable or corrupt: {exc}") from None
        frames = {}
        for path in sorted(run_dir.glob("*.parquet")):
            try:
                frames[path.stem] = pd.read_parquet(path)
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise RunDirError(f"{path} is unreadable or corrupt: {exc}") from None
        return cls(frames, meta)


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()
