"""Hugging Face: `Trainer(..., callbacks=[TrainlensCallback(run_dir=...)])`.

The watch opens at `on_train_begin` (the Trainer has built its optimizer; accelerate's
wrapper is looked through) and closes at `on_train_end`. Hugging Face models compute
their loss inside `forward` (a functional cross-entropy no loss-module hook sees), so a
forward hook on the model logs `output.loss` of every call that returns one: "train"
while training, "val" in `evaluate` (eval mode, no grad). The Trainer has no exception
event: a run that raises is written when the next training starts or at interpreter
exit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from .._probes._state import DEFAULT_SAMPLE_EVERY, compiling, is_suspended
from ._session import Session, loss_of, missing_extra

try:
    from transformers import TrainerCallback
except ImportError:
    raise missing_extra("transformers", "transformers") from None

__all__ = ["TrainlensCallback"]


class TrainlensCallback(TrainerCallback):
    """Watch `transformers.Trainer.train`. After it: `callback.lens`."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        run_id: str | None = None,
        sample_every: int = DEFAULT_SAMPLE_EVERY,
        plugins: Iterable[Any] = (),
        quiet: bool = False,
    ):
        self._session = Session(run_dir, run_id, sample_every, plugins, quiet)
        self._handles: list[Any] = []
        self._counts: list[int] = []

    @property
    def lens(self) -> Any:
        """The last watched run (`trainlens.Lens`), or None before the first train."""
        return self._session.last

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if model is None:
            return
        self._remove_hooks()
        lens = self._session.start(model, optimizer)
        root = lens.model  # DDP / compile wrappers looked through
        self._handles = [
            root.register_forward_pre_hook(self._pre),
            root.register_forward_hook(self._post),
        ]

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._remove_hooks()
        self._session.stop(None)

    # --- the model's own loss --------------------------------------------------------
    def _pre(self, module: Any, args: Any) -> None:
        if compiling() or is_suspended():  # trainlens's own extra passes
            return
        self._counts.append(self._session.losses_logged())

    def _post(self, module: Any, args: Any, output: Any) -> None:
        if compiling() or is_suspended():  # trainlens's own extra passes
            return
        before = self._counts.pop() if self._counts else -1
        # a loss module inside the model was captured already: do not count it twice
        if self._session.losses_logged() == before:
            loss = loss_of(output)
            if loss is not None:
                self._session.log_loss(loss.detach() if hasattr(loss, "detach") else loss)

    def _remove_hooks(self) -> None:
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()
        self._counts.clear()
