"""Finiteness: where the first NaN/Inf of a run appears, kept cheap on the hot path.

Every step, the model's floating-point inputs and the targets the loss modules get are
counted for NaN/Inf (a couple of reductions, no host-device sync): they are small and a
bad batch may come at any step. On sampled steps, and for `ALARM_STEPS` steps after the
running "a loss went non-finite" device flag was found set (read back on the flush
cadence, when the host syncs anyway), every module's input and output are checked too,
in call order. All counts of one step are stacked into a single deferred row; only the
non-finite ones become rows of the `nonfinite` table. Gradients need nothing here: the
parameter statistics of `StepProbe` already hold their norms, NaN/Inf when non-finite.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.loss import _Loss
from torch.utils.hooks import RemovableHandle

from ._loss import loss_name
from ._state import _SUSPENDED, WatchState, compiling
from ._tensors import tensor_leaves

#: steps of per-module checks after a non-finite loss was noticed between samples
ALARM_STEPS = 20
#: distinct steps whose non-finite values are written out: the first ones tell the story
MAX_BAD_STEPS = 5
#: non-finite module outputs written per step: the first few in call order
MAX_OUTPUTS_PER_STEP = 8


class _NonFiniteRows:
    """Deferred sink: turns one step's stacked counts into rows, non-finite ones only."""

    def __init__(self, table: Any):
        self.table = table
        self.bad_steps: set[int] = set()

    def append(self, step: int, labels: tuple[tuple[str, str, str], ...], *counts: float) -> None:
        outputs = 0
        for order, ((kind, name, split), count) in enumerate(zip(labels, counts, strict=True)):
            if count == 0:
                continue
            if step not in self.bad_steps:
                if len(self.bad_steps) >= MAX_BAD_STEPS:
                    return
                self.bad_steps.add(step)
            if kind in ("output", "module_input"):
                outputs += 1
                if outputs > MAX_OUTPUTS_PER_STEP:
                    continue
            self.table.append(step, split, kind, name, order, count)


class FiniteProbe:
    def __init__(self, state: WatchState):
        self.state = state
        self.handles: list[RemovableHandle] = []
        self._rows = _NonFiniteRows(state.tables["nonfinite"])
        self._step = -1
        self._look = False
        self._counts: list[torch.Tensor] = []
        self._labels: list[tuple[str, str, str]] = []
        self._loss_bad: list[torch.Tensor] = []
        self._flag: torch.Tensor | None = None  # running: some loss was non-finite
        self._checked_at = 0
        self._alarm_until = -1

    def install(self) -> None:
        model = self.state.model
        self.handles.append(model.register_forward_pre_hook(self._on_input))
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_hook(self._on_output(name)))
        self.handles.append(nn.modules.module.register_module_forward_hook(self._on_loss))

    def finish(self, exc: BaseException | None) -> None:
        self._emit()

    # --- per step --------------------------------------------------------------------
    def _sync_step(self) -> None:
        """First hook of a new step: write out the previous one, decide whether to look."""
        state = self.state
        if state.step == self._step:
            return
        self._emit()
        self._step = state.step
        if self._flag is not None and state.step - self._checked_at >= state.sampling.flush_every:
            self._checked_at = state.step
            if bool(self._flag):  # on the flush cadence: the host has just synced anyway
                self._alarm_until = state.step + ALARM_STEPS
                self._flag = None
        self._look = state.sampled or state.step < self._alarm_until

    def _emit(self) -> None:
        if not self._counts:
            return
        counts, labels = self._counts, tuple(self._labels)
        self._counts, self._labels = [], []
        with torch.no_grad():
            device = counts[0].device
            row = torch.stack([c.to(device, torch.float32) for c in counts])
            if self._loss_bad:
                bad = torch.stack([b.to(device) for b in self._loss_bad]).any()
                self._flag = bad if self._flag is None else self._flag.to(device) | bad
                self._loss_bad = []
        self.state.deferred.add(self._rows, [(self._step, labels)], row[None])

    def _count(self, kind: str, name: str, t: torch.Tensor) -> None:
        with torch.no_grad():
            self._counts.append(torch.count_nonzero(~torch.isfinite(t.detach())))
        self._labels.append((kind, name, self.state.split()))

    # --- hooks -----------------------------------------------------------------------
    def _on_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if compiling() or _SUSPENDED[0]:
            return
        self._sync_step()
        for i, t in enumerate(tensor_leaves(args)):
            if t.is_floating_point() and t.numel() > 0:
                self._count("input", f"input {i}", t)

    def _on_output(self, name: str):
        def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if compiling() or _SUSPENDED[0] or not self._look or isinstance(module, _Loss):
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
        if compiling() or _SUSPENDED[0] or not isinstance(module, _Loss):
            return
        self._sync_step()
        name = loss_name(self.state, module)
        if len(args) >= 2 and isinstance(args[1], torch.Tensor):
            target = args[1]
            if target.is_floating_point() and target.numel() > 0:
                self._count("target", name, target)
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            with torch.no_grad():
                self._loss_bad.append(~torch.isfinite(output.detach()).all())


def _first_float(value: Any) -> torch.Tensor | None:
    for t in tensor_leaves(value):
        if t.is_floating_point() and t.numel() > 0:
            return t
    return None
