"""Data loaders: how often the loop starts a new iterator over each `DataLoader`.

`for xb, yb in loader` starts one iterator an epoch and draws every batch from it.
`xb, yb = next(iter(loader))` inside the step loop starts a new one every step and draws
its first batch: from a loader that does not shuffle (or a sampler whose order does not
change between iterators) that is the same batch every step, and the model memorises it.
The probe counts, per loader, the iterators started and the optimizer steps that started
one; the rule reads them beside the model's input statistics (`inputs` table), which
tell whether those batches were in fact the same.

Cost: one call per iterator started (once an epoch in the usual loop), nothing per
batch. `DataLoader.__iter__` is patched on the class for the block, counting only the
loaders iterated in the thread that opened it.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from ._base import Probe, _Removal, hook
from ._state import WatchState

#: loaders described per run (a loop that makes a loader per step: the first ones)
MAX_LOADERS = 8


class LoaderProbe(Probe):
    name = "loaders"

    def __init__(self, state: WatchState):
        super().__init__(state)
        # id(loader) -> (weak reference, its entry in `extra_meta["loaders"]`)
        self._entries: dict[int, tuple[Any, dict[str, Any]]] = {}
        self._thread = threading.get_ident()

    def install(self) -> None:
        self.state.extra_meta["loaders"] = []
        self.handles.append(_patch_loader_iter(self._on_iter))

    @hook(in_compiled=True)
    def _on_iter(self, loader: Any) -> None:
        if threading.get_ident() != self._thread:
            return  # a loader another thread iterates (a prefetching helper)
        state = self.state
        known = self._entries.get(id(loader))
        entry = known[1] if known is not None and known[0]() is loader else None
        if entry is None:  # a new loader (or one at the address of a loader that died)
            if len(self._entries) >= MAX_LOADERS:
                return
            entry = _describe(loader)
            entry.update(
                iterators=0, train_iterators=0, steps_started=0, first_step=state.step, last_step=-1
            )
            try:
                ref: Any = weakref.ref(loader)
            except TypeError:  # a subclass with __slots__ and no weak references
                ref = lambda: None  # noqa: E731 - counted once, never matched again
            self._entries[id(loader)] = (ref, entry)
            state.extra_meta["loaders"].append(entry)
        entry["iterators"] += 1
        # started with the model in train mode: the training loader, not the validation one
        entry["train_iterators"] += bool(state.model.training)
        if entry["last_step"] != state.step:
            entry["steps_started"] += 1
            entry["last_step"] = state.step

    def finish(self, exc: BaseException | None) -> None:
        self._entries.clear()


def _describe(loader: Any) -> dict[str, Any]:
    """What decides whether two iterators start at the same batch: the loader's length and
    its sampler (`SequentialSampler`: always; `RandomSampler`: a new order each time)."""
    try:
        batches: int | None = len(loader)
    except Exception:  # an iterable dataset without a length
        batches = None
    sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(sampler, "sampler", None) or getattr(loader, "sampler", None)
    return {
        "batches": batches,
        "batch_size": getattr(loader, "batch_size", None),
        "sampler": type(inner).__name__ if inner is not None else None,
        # a batch sampler of the user's own decides the batches itself (an episodic or
        # P x K sampler), whatever `sampler` says
        "batch_sampler": type(sampler).__name__ if sampler is not None else None,
    }


def _patch_loader_iter(seen: Any) -> _Removal:
    """`seen(loader)` at every `iter(loader)` of a `torch.utils.data.DataLoader` (subclasses
    included: they call the base's `__iter__`), for the block only."""
    from torch.utils.data import DataLoader

    original = vars(DataLoader).get("__iter__")
    if original is None:  # pragma: no cover - every torch has it
        return _Removal(lambda: None)
    active = [True]

    def __iter__(self: Any) -> Any:
        if active[0]:
            try:  # noqa: SIM105 - once per iterator; never the user's error
                seen(self)
            except Exception:
                pass
        return original(self)

    DataLoader.__iter__ = __iter__  # type: ignore[method-assign]

    def undo() -> None:
        active[0] = False
        if vars(DataLoader).get("__iter__") is __iter__:
            DataLoader.__iter__ = original  # type: ignore[method-assign]

    return _Removal(undo)
