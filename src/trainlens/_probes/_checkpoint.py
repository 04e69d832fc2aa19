"""`watch(..., checkpoint=True)`: keep the last good weights as `checkpoint.pt`.

"Good" is the best validation loss when the loop evaluates, else the last weights whose
training loss (as captured: an `nn` loss module or `lens.log_loss`) was still finite.
The cost is bounded: a CPU copy of the `state_dict` only when an evaluation improves the
validation loss (one host read per evaluation, not per step); without validation losses,
a look every `flush_every` (50) steps at the losses the read-back has just brought to the
host, and at that step's own (one host read), with one copy each time while every loss is
finite, so the checkpoint before a NaN is at most 50 steps old. The steps in between pay
one comparison: no kernel, no sync. Off by default.
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from .._io import atomic_write_bytes
from ._base import Probe, guarded, hook
from ._state import WatchState

FILENAME = "checkpoint.pt"

#: what `watch(checkpoint=...)` accepts as "on"
MODES = (True, "best")


class CheckpointProbe(Probe):
    name = "checkpoint"

    def __init__(self, state: WatchState):
        super().__init__(state)
        self.on = state.checkpoint in MODES
        self._weights: dict[str, torch.Tensor] | None = None
        self._saved_step: int | None = None
        self._reason = ""
        self._best = math.inf
        self._val_sum: torch.Tensor | None = None
        self._val_n = 0
        self._val_step = 0
        self._seen_val = False
        self._losses_seen = 0  # rows of the losses table looked at so far
        self._checked_step = -1
        self._frozen = False
        self._on_disk = False  # checkpoint.pt holds the weights of `_saved_step`

    def install(self) -> None:
        if not self.on:
            return
        listeners: OrderedDict[int, Any] = self.state.loss_listeners
        handle = RemovableHandle(listeners)
        listeners[handle.id] = self._on_loss
        self.handles.append(handle)
        if self.state.optimizer is not None:
            # decide on an evaluation before the next step changes the weights
            self.handles.append(self.state.optimizer.register_step_pre_hook(self._pre_step))

    @hook(in_compiled=True)
    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._decide_val()

    @guarded
    def _on_loss(self, split: str, value: torch.Tensor) -> None:
        if value.is_meta:
            return  # a dry run on the meta device: no values to judge weights by
        if split == "val":
            v = value.detach().reshape(()).float()
            self._val_sum = v if self._val_sum is None else self._val_sum + v
            self._val_n += 1
            self._val_step = self.state.step
            self._seen_val = True
            return
        if self._val_sum is not None:
            self._decide_val()  # the weights are still the evaluated ones
        if self._seen_val or self._frozen:
            return
        step = self.state.step
        every = self.state.sampling.flush_every
        if step % every or step == self._checked_step:
            return
        # the read-back at the end of the last step brought every loss before this one
        # to the host: this step's is the one left to read
        self._checked_step = step
        self._check_finite(
            step,
            f"last weights with every loss finite (checked every {every} steps)",
            bool(torch.isfinite(value.detach()).all()),
        )

    def _check_finite(self, step: int, reason: str, current: bool = True) -> None:
        """Copy the weights if every training loss so far was finite (`current`: the one
        not read back yet); from the first that was not, keep the copy made before it."""
        losses = self.state.tables["losses"]
        new, self._losses_seen = losses.seen - self._losses_seen, losses.seen
        values, splits = losses.tail("value", new), losses.tail("split", new)
        train = (v for v, split in zip(values, splits, strict=True) if split == "train")
        if not current or not all(math.isfinite(v) for v in train):
            self._frozen = True
            return
        self._snapshot(step, reason)

    def _decide_val(self) -> None:
        if self._val_sum is None:
            return
        mean = float(self._val_sum) / self._val_n
        self._val_sum, self._val_n = None, 0
        if math.isfinite(mean) and mean < self._best:
            self._best = mean
            self._snapshot(self._val_step, f"best validation loss {mean:.4g}")

    def _snapshot(self, step: int, reason: str) -> None:
        with torch.no_grad():
            self._weights = {
                k: v.detach().to("cpu", copy=True) for k, v in self.state.model.state_dict().items()
            }
        self._saved_step, self._reason = step, reason

    def persist(self) -> None:
        """Write the latest good weights now (called when the records are streamed), so a
        killed run leaves its checkpoint on disk, and free the in-memory copy."""
        if self._weights is None or self.state.run_dir is None:
            return
        self._write(durable=False)
        self._weights = None
        self._meta()

    def _write(self, durable: bool) -> None:
        assert self.state.run_dir is not None
        buf = io.BytesIO()
        torch.save(self._weights, buf)
        atomic_write_bytes(self.state.run_dir / FILENAME, buf.getvalue(), durable=durable)
        self._on_disk = True

    def _meta(self) -> None:
        meta: dict[str, Any] = {"file": None, "step": self._saved_step, "reason": self._reason}
        if self._on_disk:
            meta["file"] = FILENAME
            if self._seen_val:
                meta["val_loss"] = self._best
        else:
            meta["reason"] = "no good weights seen (the first loss was already non-finite)"
        self.state.extra_meta["checkpoint"] = meta

    def finish(self, exc: BaseException | None) -> None:
        if not self.on:
            return
        self._decide_val()
        if not self._seen_val and not self._frozen:
            self.state.deferred.flush()  # the losses since the last read-back, on the host
            self._check_finite(self.state.step, "final weights: every loss was finite")
        if self._weights is not None and self.state.run_dir is not None:
            self._write(durable=True)
        self._meta()
        self._weights = None
