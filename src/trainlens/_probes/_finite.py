"""Finiteness: where the first NaN/Inf of a run appears, kept cheap on the hot path.

Every step costs nothing extra: the losses the loss probe records reach the host on the
flush cadence (when it syncs anyway), and a non-finite one among them raises the alarm.
On sampled steps, and for `ALARM_STEPS` steps after such an alarm, the
model's floating-point inputs, the targets the loss modules get and every module's input
and output are summed (one reduction each, no sync): a sum is NaN/Inf exactly when the
tensor holds a NaN/Inf (short of float32 overflow, ~3e38), and it tells NaN (0/0) from
-Inf (log of 0). All sums of one step are stacked into a single
deferred row; only the non-finite ones become rows of the `nonfinite` table. Gradients
need nothing here: the parameter statistics of `StepProbe` already hold their norms,
NaN when non-finite.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import nn
from torch.nn.modules.loss import _Loss

from ._base import Probe, guarded
from ._loss import loss_name
from ._state import WatchState
from ._tensors import detached, distinct, has_values, tensor_leaves, version

#: steps of per-module checks after a non-finite loss was noticed between samples
ALARM_STEPS = 20
#: distinct steps written per place (input, target, module): the first ones tell the
#: story, and a place that is always non-finite (an additive -inf mask) cannot crowd out
#: the others
MAX_BAD_STEPS = 5
#: non-finite module outputs written per step: the first few in call order
MAX_OUTPUTS_PER_STEP = 8
#: checks held before a row is written even within one step (an eval-only loop never
#: completes a step, and must not grow a list without bound)
MAX_PENDING = 512


class _NonFiniteRows:
    """Deferred sink: turns one step's stacked sums into rows, non-finite ones only."""

    def __init__(self, table: Any):
        self.table = table
        self.bad_steps: dict[tuple[str, str], set[int]] = {}

    def append(
        self, step: int, labels: tuple[tuple[str, str, str, int], ...], *sums: float
    ) -> None:
        outputs = 0
        for (kind, name, split, order), value in zip(labels, sums, strict=True):
            if math.isfinite(value):
                continue
            seen = self.bad_steps.setdefault((kind, name), set())
            if step not in seen:
                if len(seen) >= MAX_BAD_STEPS:
                    continue
                seen.add(step)
            if kind in ("output", "module_input"):
                outputs += 1
                if outputs > MAX_OUTPUTS_PER_STEP:
                    continue
            self.table.append(step, split, kind, name, order, value)


class FiniteProbe(Probe):
    name = "finite"
    writes = ("nonfinite",)

    def __init__(self, state: WatchState):
        super().__init__(state)
        self._rows = _NonFiniteRows(state.tables["nonfinite"])
        self._step = -1
        self._look = False
        self._counts: list[torch.Tensor] = []
        # the maxima of checks read from the activation extremes (None for a sum): added to
        # their minima in one kernel at the step's end, not in one per check
        self._highs: list[torch.Tensor | None] = []
        self._labels: list[tuple[str, str, str, int]] = []
        self._zero: torch.Tensor | None = None
        self._order = 0  # checks made so far in this step
        # tensors checked this step, with their version: in a chain a module's input is the
        # output checked just before it, and a container returns its last child's output;
        # checking one twice costs a kernel for no new fact (unless written to in between)
        self._summed: dict[int, tuple[weakref.ref[torch.Tensor], int]] = {}
        self._losses_seen = 0  # rows of the losses table already checked for NaN/Inf
        self._alarm_until = -1

    def install(self) -> None:
        model = self.state.model
        # nothing runs on the other steps: the losses are looked at after each read-back
        # (`_check_losses`), a step's sums are written at the next sampled step or flush
        self.state.forwards.pre(self, {model: self._on_input}, sampled=True)
        self.state.deferred.before_flush(self._emit_guarded)
        self.state.deferred.after_flush(self._check_losses)
        # the model's modules through the shared dispatch; loss modules wherever they live
        outputs = {
            module: self._on_output(name)
            for name, module in model.named_modules()
            if not isinstance(module, _Loss)
        }
        # per module and per loss only on sampled (and alarm) steps, gated in the dispatch
        self.state.forwards.post(self, outputs, sampled=True)
        self.state.forwards.loss(self, self._on_loss, sampled=True)

    def finish(self, exc: BaseException | None) -> None:
        self._emit()

    # --- per step --------------------------------------------------------------------
    def _sync_step(self) -> None:
        """First hook of a sampled step: write out the previous one, decide whether to look."""
        state = self.state
        if state.step == self._step:
            return
        self._emit()
        self._step = state.step
        self._order = 0
        self._summed.clear()
        self._look = state.sampled or state.step < self._alarm_until

    @guarded
    def _check_losses(self) -> None:
        """After a read-back: a NaN/Inf among the losses that just reached the host raises
        the alarm, and the next `ALARM_STEPS` steps are sampled for every probe (the
        statistics around the first NaN/Inf are the ones worth having; the per-module
        checks here ride the dispatch's sampled-steps gate)."""
        state = self.state
        losses = state.tables["losses"]
        new, self._losses_seen = losses.seen - self._losses_seen, losses.seen
        if any(not math.isfinite(v) for v in losses.tail("value", new)):
            self._alarm_until = state.step + ALARM_STEPS
            state.alarm_until = max(state.alarm_until, self._alarm_until)
            state.sampled = True

    def _emit(self) -> None:
        if not self._counts:
            return
        counts, highs, labels = self._counts, self._highs, tuple(self._labels)
        self._counts, self._highs, self._labels = [], [], []
        device = counts[0].device  # the sums are detached: no `no_grad()` needed
        # a list of bools, not `highs.count(None)`: that compares each tensor to None
        # with a torch op
        if not all([h is None for h in highs]):
            # min + max of the extremes read, + 0 for the sums: NaN, +Inf, -Inf alike
            zero = self._zero
            if zero is None or zero.device != device:
                zero = self._zero = torch.zeros((), device=device)
            counts = [*counts, *[zero if h is None else h for h in highs]]
        if len({c.device for c in counts}) > 1:  # a model split over devices
            counts = [c.to(device) for c in counts]
        row = torch.stack(counts)
        if len(row) != len(labels):
            row = row.view(2, -1).sum(0)
        self.state.deferred.add_row(self._rows, (self._step, labels), row)

    #: for the read-back, outside any hook: its failure stops only this probe
    _emit_guarded = guarded(_emit)

    def _count(self, kind: str, name: str, t: torch.Tensor) -> None:
        seen = self._summed.get(id(t))
        v = version(t)
        if (
            kind in ("module_input", "output")
            and seen is not None
            and seen[0]() is t
            and seen[1] == v
            and v >= 0  # an inference tensor's writes are not counted: check it again
        ):
            return
        self._summed[id(t)] = (weakref.ref(t), v)
        if len(self._counts) >= MAX_PENDING:
            self._emit()
        ext = self.state.extrema.get(id(t))
        if ext is not None and ext[0]() is t and ext[1] == v and v >= 0:
            # the activation statistics took its extremes (and nothing wrote to it in place
            # since): min + max is non-finite exactly when the sum is (NaN, +Inf, -Inf
            # alike), without another pass over the tensor
            self._counts.append(ext[2])
            self._highs.append(ext[3])
        else:
            # a detached tensor records no graph: no `no_grad()` context (~9 Python calls)
            self._counts.append(distinct(detached(t)).sum(dtype=torch.float32))
            self._highs.append(None)
        self._labels.append((kind, name, self.state.split(), self._order))
        self._order += 1

    # --- hooks -----------------------------------------------------------------------
    def _on_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._sync_step()
        if not self._look:
            return
        for i, t in enumerate(tensor_leaves(args)):
            if t.is_floating_point() and has_values(t) and t.numel() > 0:
                self._count("input", f"input {i}", t)

    def _on_output(self, name: str):
        def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not self._look:
                return
            out = _first_float(output)
            if out is None:
                return
            # the input too: a NaN made between two modules (in the parent's forward)
            # reaches the next module's input, and that module did not make it
            x = _first_float(args)
            if x is not None:
                self._count("module_input", name, x)
            self._count("output", name, out)

        return post

    def _on_loss(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._sync_step()
        if not self._look:
            return
        name = loss_name(self.state, module)
        if len(args) >= 2 and isinstance(args[1], torch.Tensor):
            target = args[1]
            if target.is_floating_point() and has_values(target) and target.numel() > 0:
                self._count("target", name, target)


def _first_float(value: Any) -> torch.Tensor | None:
    if type(value) is tuple and len(value) == 1:
        value = value[0]  # a module's usual arguments: one tensor
    if type(value) is torch.Tensor:  # without walking the structures
        ok = value.is_floating_point() and has_values(value) and value.numel() > 0
        return value if ok else None
    for t in tensor_leaves(value):
        if t.is_floating_point() and has_values(t) and t.numel() > 0:
            return t
    return None
