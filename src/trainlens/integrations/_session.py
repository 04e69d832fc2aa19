"""What both framework callbacks share: one `watch` opened and closed from callbacks."""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import trainlens
import trainlens._watch

from .. import _distributed
from .._probes._state import DEFAULT_SAMPLE_EVERY


def missing_extra(framework: str, extra: str) -> ImportError:
    return ImportError(
        f"trainlens.integrations.{extra} needs {framework}, which is not installed: "
        f"pip install trainlens[{extra}]"
    )


def inner_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer under a framework's wrapper (accelerate's AcceleratedOptimizer,
    Lightning's LightningOptimizer): its step hooks are the ones that fire."""
    seen = 0
    while optimizer is not None and seen < 4:
        inner = getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            inner = getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            break
        optimizer, seen = inner, seen + 1
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


class SessionCallback:
    """What both framework callbacks share: their arguments, their session, `lens`.

    A framework callback class lists this first (`class C(SessionCallback, Callback)`)
    and sets up its own state in `_start_state`.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        run_id: str | None = None,
        sample_every: int = DEFAULT_SAMPLE_EVERY,
        plugins: Iterable[Any] = (),
        quiet: bool = False,
    ):
        super().__init__()
        self._session = Session(run_dir, run_id, sample_every, plugins, quiet)
        self._start_state()

    def _start_state(self) -> None:
        """The framework's own per-callback state (counters, handles)."""

    @property
    def lens(self) -> Any:
        """The last watched run (`trainlens.Lens`), or None before the first one."""
        return self._session.last


class Session:
    """A `trainlens.watch` block whose enter and exit are two callback events."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | None,
        run_id: str | None,
        sample_every: int,
        plugins: Iterable[Any],
        quiet: bool,
    ):
        self.run_dir = run_dir  # None: the framework's own folder, or trainlens's default
        self.kwargs = dict(
            run_id=run_id,
            sample_every=sample_every,
            plugins=list(plugins),
            quiet=quiet,
        )
        self.lens: trainlens.Lens | None = None
        self.last: trainlens.Lens | None = None
        self._atexit = False

    @property
    def open(self) -> bool:
        return self.lens is not None

    def start(
        self, model: nn.Module, optimizer: Any, default_dir: str | os.PathLike[str] | None = None
    ) -> trainlens.Lens:
        """Open the watch; `default_dir` (the framework's log or output folder) holds the
        run dirs when no `run_dir` was given: `<default_dir>/trainlens/<run_id>`."""
        self.stop(None)  # a run that ended without its end event (an exception)
        kwargs = dict(self.kwargs)
        run_dir = self.run_dir
        if run_dir is None and default_dir is not None:
            # the run id a distributed run shares between its ranks, as watch would take it
            run_id = (
                kwargs["run_id"]
                or _distributed.shared_run_id_if_distributed()
                or trainlens._watch.new_run_id()
            )
            kwargs["run_id"] = run_id
            run_dir = Path(default_dir) / "trainlens" / run_id
        lens = trainlens.watch(model, inner_optimizer(optimizer), run_dir=run_dir, **kwargs)
        lens.__enter__()
        self.lens = self.last = lens
        if not self._atexit:
            self._atexit = True
            atexit.register(self._at_exit)
        return lens

    def stop(self, exc: BaseException | None) -> trainlens.Lens | None:
        """Close the watch (write the drill); the closed lens, or None if none was open."""
        lens, self.lens = self.lens, None
        if lens is not None:
            lens.__exit__(None if exc is None else type(exc), exc, None)
        return lens

    def _at_exit(self) -> None:
        # the framework gave no exception event and no way to see train() end: an
        # uncaught exception ended the program inside training; write its drill now
        exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        self.stop(exc if isinstance(exc, BaseException) else None)

    # --- what callbacks read and tell ------------------------------------------------
    def losses_logged(self) -> int:
        return -1 if self.lens is None else self.lens.losses_seen()

    def set_split(self, split: str | None) -> None:
        if self.lens is not None:
            self.lens.set_split(split)

    def log_loss(self, loss: Any, split: str | None = None) -> None:
        if self.lens is not None and isinstance(loss, (torch.Tensor, float, int)):
            if isinstance(loss, torch.Tensor) and (
                not loss.is_floating_point() or loss.numel() != 1
            ):
                return
            self.lens.log_loss(loss, split)


def headline(lens: trainlens.Lens | None) -> dict[str, Any] | None:
    """The drill's headline for a framework's loggers: status, first symptom and cause."""
    drill = None if lens is None else lens.drill
    if not drill:
        return None
    first = drill["findings"][0] if drill.get("findings") else None
    return {
        "trainlens/status": drill.get("status"),
        "trainlens/symptom": first["symptom"] if first else "none",
        "trainlens/cause": first["likely_cause"] if first else "none",
        "trainlens/findings": len(drill.get("findings", [])),
        "trainlens/drill": str(lens.run_dir / "drill.md"),
    }


def loss_of(outputs: Any) -> Any:
    """The loss in what a step returned: a tensor, `{"loss": ...}` or a ModelOutput."""
    if isinstance(outputs, torch.Tensor):
        return outputs if outputs.numel() == 1 else None
    if isinstance(outputs, dict):
        return outputs.get("loss")
    return getattr(outputs, "loss", None)
