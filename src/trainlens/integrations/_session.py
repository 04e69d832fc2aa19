"""What both framework callbacks share: one `watch` opened and closed from callbacks."""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

import trainlens

from .._probes import LossProbe, StepProbe


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
        self.kwargs = dict(
            run_dir=run_dir,
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

    def start(self, model: nn.Module, optimizer: Any) -> trainlens.Lens:
        self.stop(None)  # a run that ended without its end event (an exception)
        lens = trainlens.watch(model, inner_optimizer(optimizer), **self.kwargs)
        lens.__enter__()
        self.lens = self.last = lens
        if not self._atexit:
            self._atexit = True
            atexit.register(self._at_exit)
        return lens

    def stop(self, exc: BaseException | None) -> None:
        lens, self.lens = self.lens, None
        if lens is not None:
            lens.__exit__(None if exc is None else type(exc), exc, None)

    def _at_exit(self) -> None:
        # the framework gave no exception event (transformers): an uncaught exception
        # ended the program inside training; write its drill now
        exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        self.stop(exc if isinstance(exc, BaseException) else None)

    # --- what callbacks read ---------------------------------------------------------
    def probe(self, cls: type) -> Any:
        lens = self.lens
        if lens is None:
            return None
        return next((p for p in lens._probes if isinstance(p, cls)), None)

    @property
    def state(self) -> Any:
        return None if self.lens is None else self.lens._state

    def losses_logged(self) -> int:
        probe = self.probe(LossProbe)
        return -1 if probe is None else probe.count

    def log_loss(self, loss: Any, split: str | None = None) -> None:
        if self.lens is not None and isinstance(loss, (torch.Tensor, float, int)):
            if isinstance(loss, torch.Tensor) and not loss.is_floating_point():
                return
            self.lens.log_loss(loss, split)

    def step_probe(self) -> StepProbe | None:
        return self.probe(StepProbe)


def loss_of(outputs: Any) -> Any:
    """The loss in what a step returned: a tensor, `{"loss": ...}` or a ModelOutput."""
    if isinstance(outputs, torch.Tensor):
        return outputs if outputs.numel() == 1 else None
    if isinstance(outputs, dict):
        return outputs.get("loss")
    return getattr(outputs, "loss", None)
