"""Records: columnar buffers while a run goes, pandas DataFrames after it.

Probes append plain Python numbers (or small device tensors through `Deferred`, read back
in bulk); rules only ever see the DataFrames and the run's metadata. Tables and their
columns are declared here, in one place, so an empty table still has its columns and a
rule can rely on them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
    # per attention layer and head, on sampled training steps: mean row entropy divided by
    # log(keys the query may see), rows with one allowed key left out; mean max weight
    "attention": ("step", "module", "source", "head", "entropy_norm", "max_weight", "rows"),
    # per attention layer, once: Q/K/V/output shapes (JSON) and how it was called
    "attention_layers": (
        "step",
        "module",
        "source",
        "q_shape",
        "k_shape",
        "v_shape",
        "out_shape",
        "heads",
        "head_dim",
        "scale",
        "mask",
    ),
    # per attention layer: one head's weights for one sample (JSON, at most 64x64), at the
    # first and the latest observation
    "attention_maps": ("step", "module", "head", "sample", "weights"),
    # CrossEntropy/NLL/MSE input and target on sampled steps: are the inputs already
    # probabilities (prob_dev = mean |row sum - 1|) or log-probabilities (logprob_dev =
    # mean |logsumexp(row)|); baseline = loss of the best constant prediction; target_rms
    # = root mean square of the regression targets seen so far (NaN for classification);
    # the *_batch deviations are the same over the batch axis of a [N, C] input (columns
    # normalised: a softmax over dim=0, each sample's loss depends on the others); target_below_* /
    # target_above_* (regression): the share of the targets below the batch's lowest
    # prediction (above its highest) and the mean over all targets of their squared
    # distance to it: an output that cannot go below 0 (a final ReLU) leaves that much loss;
    # batch_entropy (classification, on the steps that update the prior): the entropy of
    # the batch's own class mix, over batch_targets targets (a batch of one class: 0)
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
        "target_rms",
        "prob_dev_batch",
        "logprob_dev_batch",
        "target_below_share",
        "target_below_mse",
        "target_above_share",
        "target_above_mse",
        "batch_entropy",
        "batch_targets",
    ),
    # sampled optimizer steps: the norm of the optimizer's `.grad`s before the step's first
    # backward pass adds to them (carried, 0 after zero_grad) and at `optimizer.step()`
    "grad_carry": ("step", "carried_norm", "step_norm", "carried_frac"),
    # per sampled step, at its first training forward: process memory (CUDA allocated bytes,
    # CPU heap in use or RSS; no sync) and how many earlier steps' autograd graphs are still alive
    "memory": ("step", "memory_bytes", "kind", "retained_graphs", "oldest_retained_step"),
    # NaN/Inf where they were found (value: the tensor's sum, nan or +-inf): kind "input"
    # (model input), "target" (a loss
    # module's target), "output"/"module_input" (a module's output/input, `order` = order
    # of the checks in the step: outputs in the order the modules returned)
    "nonfinite": ("step", "split", "kind", "name", "order", "value"),
}


@dataclass(frozen=True)
class Thinning:
    """How a table stays bounded on a long run (100 000 steps and more).

    Rows of the first `head_steps` steps are all kept (short runs, where most bugs show,
    are seen in full). Once the table holds `max_rows` rows, the later rows are thinned
    by step buckets: per bucket and per key (the identity columns, e.g. param, module,
    split), the first and last row and the rows holding each value column's minimum,
    maximum, first non-finite value and largest jump (with the row before it) are kept;
    the bucket width doubles as the run grows. So the curve shape, the extremes, the
    change points, every first occurrence of a key and the first NaN/Inf survive, and
    memory stays O(max_rows). The head is at most max_rows // 8 rows (a model with very
    many parameters has a shorter full-resolution head). With `thin=False` the table
    keeps its first `max_rows` rows and counts the rest (for rare one-off rows).
    `records.meta["thinning"]` says which tables were thinned, and how coarsely.
    """

    head_steps: int = 1000
    max_rows: int = 40_000
    #: identity columns; None: the columns whose first value is not a number
    keys: tuple[str, ...] | None = None
    thin: bool = True


#: per-table policy; a table not named here gets DEFAULT_THINNING
THINNING: dict[str, Thinning | None] = {
    # bounded at the source: MAX_SIGNATURES distinct signatures per module
    "shapes": None,
    # one-off observations, deduplicated by state.event: a hard cap is a safety net only
    "events": Thinning(max_rows=10_000, thin=False),
}
DEFAULT_THINNING = Thinning()


def policy_for(table: str) -> Thinning | None:
    """The thinning policy of `table` (read at each run's start, so tests can tighten it)."""
    return THINNING.get(table, DEFAULT_THINNING)


class Table:
    """An append-only columnar buffer of Python values, bounded by its `Thinning` policy."""

    __slots__ = ("_data", "_limit", "_width", "columns", "dropped", "generation", "policy", "seen")

    def __init__(self, columns: Sequence[str], policy: Thinning | None = DEFAULT_THINNING):
        self.columns = tuple(columns)
        self._data: list[list[Any]] = [[] for _ in self.columns]
        self.policy = policy
        # the row count that triggers the next compaction (never, without a policy)
        self._limit = policy.max_rows if policy is not None else math.inf
        self._width = 1  # current bucket width in steps
        self.seen = 0  # rows appended in all
        self.dropped = 0  # rows thinned away or refused
        self.generation = 0  # +1 at each compaction: rows before it may have moved

    def append(self, *row: Any) -> None:
        data = self._data
        if len(row) != len(data):
            raise ValueError(f"a row of {len(row)} values for the columns {self.columns}")
        # one C loop over the columns (`list.append` returns None: `any` reads them all);
        # a Python loop is most of what a step's row costs on a small model
        any(map(list.append, data, row))
        self.seen += 1
        if len(data[0]) >= self._limit:
            self._compact()

    def extend(self, rows: Sequence[Sequence[Any]]) -> None:
        """Many rows at once, column by column (a flush writes its rows here: a Python
        call per row and column is most of what a read-back costs on a small model)."""
        if not rows:
            return
        for col, values in zip(self._data, zip(*rows, strict=True), strict=True):
            col.extend(values)
        self.seen += len(rows)
        if len(self._data[0]) >= self._limit:
            self._compact()

    def __len__(self) -> int:
        return len(self._data[0])

    def tail(self, column: str, n: int) -> list[Any]:
        """The last `n` values of `column` still kept (a probe's look at recent rows)."""
        if n <= 0:
            return []
        return self._data[self.columns.index(column)][-n:]

    def frame(self, start: int = 0) -> pd.DataFrame:
        """Rows `start:` as a DataFrame. A row half appended when a signal unwound the
        run (columns of unequal length) is left out."""
        n = min(len(col) for col in self._data)
        return pd.DataFrame(
            {c: col[start:n] for c, col in zip(self.columns, self._data, strict=True)}
        )

    def thinning(self) -> dict[str, Any]:
        """What a rule should know about this table's resolution (for `records.meta`)."""
        return {"rows_seen": self.seen, "rows_kept": len(self), "bucket_steps": self._width}

    # --- bounding ----------------------------------------------------------------------
    def _compact(self) -> None:
        """Thin the rows to at most max_rows // 4 (vectorised: amortised well under 1 µs a row)."""
        policy = self.policy
        assert policy is not None
        n = len(self)
        if not policy.thin:
            # keep the first max_rows rows: drop the one just appended, and all later ones
            for col in self._data:
                del col[policy.max_rows :]
            self.dropped += n - len(self)
            return  # the kept rows did not move: no new generation
        steps = (
            _int_array(self._data[self.columns.index("step")]) if "step" in self.columns else None
        )
        if steps is None:
            steps = np.arange(n, dtype=np.int64)
        in_head = steps < policy.head_steps
        in_head &= np.cumsum(in_head) <= policy.max_rows // 8
        pool = np.flatnonzero(~in_head)
        keys, values = self._key_and_value_arrays(pool)
        target = max(1, policy.max_rows // 4 - int(in_head.sum()))
        span = int(steps.max()) + 1 if n else 1
        width = self._width
        while True:
            kept = _thin(steps[pool] // width, keys, values)
            if len(kept) <= target or width > span:
                break
            width *= 2 ** max(1, math.ceil(math.log2(len(kept) / target)))
        self._width = width
        if len(kept) > target:
            # keys too many to thin by (a key column full of distinct values): stride
            kept = kept[:: -(-len(kept) // target)]
        keep = np.sort(np.concatenate([np.flatnonzero(in_head), pool[kept]])).tolist()
        self._data = [[col[i] for i in keep] for col in self._data]
        self.dropped += n - len(keep)
        self.generation += 1
        # the next compaction after max_rows - len(keep) more rows (amortised O(1) a row)
        self._limit = policy.max_rows

    def _key_and_value_arrays(self, rows: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """One integer code per row for the identity columns; the value columns as floats."""
        policy = self.policy
        assert policy is not None
        code = np.zeros(len(rows), dtype=np.int64)
        values = []
        for name, col in zip(self.columns, self._data, strict=True):
            if name == "step":
                continue
            if policy.keys is None or name not in policy.keys:
                first = next((v for v in col if v is not None), None)
                if policy.keys is not None or (
                    isinstance(first, (int, float)) and not isinstance(first, bool)
                ):
                    arr = _float_array(col)
                    if arr is not None:
                        values.append(arr[rows])
                        continue
            codes, uniques = pd.factorize(
                pd.Series(col, dtype=object).iloc[rows], use_na_sentinel=False
            )
            code = code * (len(uniques) + 1) + codes
            code = pd.factorize(code)[0]  # keep the combined code small
        return code, values


def _int_array(col: list[Any]) -> np.ndarray | None:
    try:
        return np.asarray(col, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        return None


def _float_array(col: list[Any]) -> np.ndarray | None:
    try:
        return np.asarray(col, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _firsts(groups: np.ndarray, order: np.ndarray) -> np.ndarray:
    """`order` sorts rows by group (then by what matters): the first row of each group."""
    g = groups[order]
    return order[np.r_[True, g[1:] != g[:-1]]] if len(order) else order


def _thin(buckets: np.ndarray, keys: np.ndarray, values: list[np.ndarray]) -> np.ndarray:
    """Positions kept: per (bucket, key) group the first and last row, and per value column
    the rows of its minimum, maximum, first non-finite value and largest jump."""
    n = len(buckets)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    groups = pd.factorize(buckets * (int(keys.max()) + 1) + keys)[0]
    parts = [_firsts(groups, np.argsort(groups, kind="stable"))]
    rev = np.arange(n - 1, -1, -1)
    parts.append(_firsts(groups, rev[np.argsort(groups[rev], kind="stable")]))
    for v in values:
        finite = np.isfinite(v)
        idx = np.flatnonzero(finite)
        parts.append(_firsts(groups, idx[np.lexsort((v[idx], groups[idx]))]))
        parts.append(_firsts(groups, idx[np.lexsort((-v[idx], groups[idx]))]))
        bad = np.flatnonzero(~finite)
        parts.append(_firsts(groups, bad[np.argsort(groups[bad], kind="stable")]))
        # the change point: the largest jump between neighbouring rows of a group, both rows
        order = np.argsort(groups, kind="stable")
        g, vo = groups[order], v[order]
        same = (g[1:] == g[:-1]) & np.isfinite(vo[1:]) & np.isfinite(vo[:-1])
        pos = np.flatnonzero(same) + 1
        if len(pos):
            jump = np.abs(vo[pos] - vo[pos - 1])
            best = pos[_firsts(g[pos], np.lexsort((-jump, g[pos])))]
            parts.append(order[best])
            parts.append(order[best - 1])
    keep = np.zeros(n, dtype=bool)
    for part in parts:
        keep[part] = True
    return np.flatnonzero(keep)


class Deferred:
    """Device tensors of statistics, read back to the host in one transfer per flush.

    Reading a CUDA value forces a host-device synchronisation; collecting them here and
    flushing every few steps keeps the training loop asynchronous.
    """

    def __init__(self) -> None:
        self._items: list[tuple[Table, list[tuple[Any, ...]], torch.Tensor]] = []
        # one scalar per row (the loss of every step): stacked at the flush, so a step
        # pays one list append, not a reshape and a concatenation
        self._scalars: list[tuple[Table, tuple[Any, ...], torch.Tensor]] = []
        # callables run at the start of each flush: statistics kept as raw copies until
        # then are computed there, all steps of one kind in one batched pass
        self._before_flush: list[Any] = []
        # callables run at the end of each flush, when the rows have reached the host
        self._after_flush: list[Any] = []
        # what a flush could not read back ("ExcType: message", at most a few): one bad
        # value costs its own rows, never the others' nor the run's drill
        self.errors: list[str] = []
        # ids of the tables read while the run goes (the losses: the NaN alarm, the
        # checkpoint): a partial flush reads back these alone
        self._eager: set[int] = set()

    def _failed(self, err: BaseException) -> None:
        if len(self.errors) < 8:
            self.errors.append(f"{type(err).__name__}: {str(err)[:200]}")

    def add(self, table: Table, prefixes: list[tuple[Any, ...]], values: torch.Tensor) -> None:
        """`values` is `[len(prefixes), k]`: row i is `prefixes[i] + values[i]`."""
        self._items.append((table, prefixes, values.detach() if values.requires_grad else values))

    def add_row(self, table: Table, prefix: tuple[Any, ...], values: torch.Tensor) -> None:
        """One row: `prefix + values`, `values` of shape `[k]`."""
        self._items.append((table, [prefix], values.detach() if values.requires_grad else values))

    def add_scalar(self, table: Table, prefix: tuple[Any, ...], value: torch.Tensor) -> None:
        """One row `prefix + (value,)`, `value` a one-element tensor. Rows of a table
        written through here keep their order among themselves."""
        if value.requires_grad:
            value = value.detach()
        if value.dim():
            value = value.reshape(())
        self._scalars.append((table, prefix, value))

    def __len__(self) -> int:
        return len(self._items) + len(self._scalars)

    def before_flush(self, fn: Any) -> None:
        """Run `fn()` at the start of every flush (it may `add` rows)."""
        self._before_flush.append(fn)

    def after_flush(self, fn: Any) -> None:
        """Run `fn()` at the end of every flush, once its rows are in their tables."""
        self._after_flush.append(fn)

    def eager(self, table: Any) -> None:
        """Rows of `table` (written with `add_scalar`) reach the host at every flush, also a
        partial one."""
        self._eager.add(id(table))

    def flush(self, *, partial: bool = False) -> None:
        """Read everything back, or (`partial`) only the eager tables' scalars.

        A partial flush is the steady state's usual one: it brings the losses to the host
        for the probes that watch them as the run goes, and leaves the sampled statistics,
        which nothing reads before the run ends or streams, to a later full flush. Most of
        a full flush's cost is per flush, not per row (one `nn.Linear`: 1.0 ms with 10
        sampled steps' rows, 1.4 ms with 25, against 0.13 ms for a partial one), and the
        steady state samples one step in 20: it pays one full flush in four.
        """
        if partial:
            self._read_eager()
            self._run(self._after_flush)
            return
        self._run(self._before_flush)
        self._read_back()
        self._run(self._after_flush)

    def _read_eager(self) -> None:
        eager = self._eager
        if not self._scalars or not eager:
            return
        now = [s for s in self._scalars if id(s[0]) in eager]
        if not now:
            return
        self._scalars = [s for s in self._scalars if id(s[0]) not in eager]
        self._flush_scalars(now)

    def _run(self, callbacks: list[Any]) -> None:
        for fn in callbacks:
            try:
                fn()
            except Exception as err:
                self._failed(err)

    def _read_back(self) -> None:
        if self._scalars:
            scalars, self._scalars = self._scalars, []
            self._flush_scalars(scalars)
        if not self._items:
            return
        items, self._items = self._items, []
        try:
            host = self._read_items(items)
        except Exception as err:  # one value that cannot be read: each item on its own
            self._failed(err)
            kept, host = [], []
            for item in items:
                try:
                    host += self._read_items([item])
                    kept.append(item)
                except Exception as one:
                    self._failed(one)
            items = kept
        # rows written once, after every read-back: a retry never writes a row twice
        _write(
            (
                (table, [(*prefix, *vals) for prefix, vals in zip(prefixes, values, strict=True)])
                for (table, prefixes, _), values in zip(items, host, strict=True)
            ),
            self._failed,
        )

    def _read_items(
        self, items: list[tuple[Table, list[tuple[Any, ...]], torch.Tensor]]
    ) -> list[list[list[float]]]:
        """The items' values on the host, per item its rows. One concatenation and one
        transfer per (device, row width): no per-item copies."""
        groups: dict[tuple[torch.device, int, int], list[int]] = {}
        for i, (_, _, values) in enumerate(items):
            groups.setdefault((values.device, values.shape[-1], values.dim()), []).append(i)
        host: list[list[list[float]]] = [[]] * len(items)
        for (_, _, dim), idx in groups.items():
            if dim == 1:  # single rows (`add_row`): stacked here, not unsqueezed per step
                block = torch.stack([items[i][2] for i in idx])
            elif len(idx) > 1:
                block = torch.cat([items[i][2] for i in idx])
            else:
                block = items[idx[0]][2]
            rows = block.to(torch.float64).tolist()
            if dim == 1:
                for i, row in zip(idx, rows, strict=True):
                    host[i] = [row]
                continue
            pos = 0
            for i in idx:
                n_rows = items[i][2].shape[0]
                host[i] = rows[pos : pos + n_rows]
                pos += n_rows
        return host

    def _flush_scalars(self, scalars: list[tuple[Table, tuple[Any, ...], torch.Tensor]]) -> None:
        host: list[float]
        try:  # one device (the usual case): one stack, dtypes promoted, one transfer
            host = torch.stack([v for _, _, v in scalars]).to(torch.float64).tolist()
        except Exception:  # several devices: one stack per device and dtype, else one each
            groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
            for i, (_, _, value) in enumerate(scalars):
                groups.setdefault((value.device, value.dtype), []).append(i)
            host = [math.nan] * len(scalars)
            for idx in groups.values():
                try:
                    stacked = torch.stack([scalars[i][2] for i in idx]).to(torch.float64)
                    values = stacked.tolist()
                except Exception:
                    values = [self._one(scalars[i][2]) for i in idx]
                for i, v in zip(idx, values, strict=True):
                    host[i] = v
        _write(
            ((table, [(*prefix, v)]) for (table, prefix, _), v in zip(scalars, host, strict=True)),
            self._failed,
        )

    def _one(self, value: torch.Tensor) -> float:
        """One scalar read on its own; NaN (and the error kept) when it cannot be read."""
        try:
            return float(value.to(torch.float64).item())
        except Exception as err:
            self._failed(err)
            return math.nan


def _write(batches: Iterable[tuple[Any, list[tuple[Any, ...]]]], failed: Any) -> None:
    """(table, rows) batches written in one call per table, each table's rows in the order
    they came; a table is a `Table` or a probe's sink (anything with `append(*row)`). A
    sink that raises loses its own rows (`failed(err)`), never another table's."""
    by_table: dict[int, tuple[Any, list[tuple[Any, ...]]]] = {}
    for table, rows in batches:
        entry = by_table.get(id(table))
        if entry is None:
            entry = by_table[id(table)] = (table, [])
        entry[1].extend(rows)
    for table, rows in by_table.values():
        try:
            extend = getattr(table, "extend", None)
            if extend is not None:
                extend(rows)
            else:
                for row in rows:
                    table.append(*row)
        except Exception as err:
            failed(err)


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
            if frame.empty:  # a table with no rows reads back the same from its absence
                (run_dir / f"{name}.parquet").unlink(missing_ok=True)
                continue
            atomic_write_bytes(run_dir / f"{name}.parquet", parquet_bytes(frame))
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


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()
