"""Lightning: `Trainer(callbacks=[TrainlensCallback(run_dir=...)])` watches `trainer.fit`.

The watch opens at `on_train_start` (Lightning has created the optimizer by then) and
closes at `on_fit_end`, or at `on_exception` with the exception, so a crash still writes
its drill. The split comes from Lightning's loops: training batches are "train",
validation batches "val". `nn` loss modules are captured as in any watched run; a loss
computed otherwise (`F.cross_entropy`) is taken from `training_step`'s returned loss, and
from `validation_step`'s when it returns one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any

from .._probes._state import DEFAULT_SAMPLE_EVERY
from ._session import Session, loss_of, missing_extra

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError:
        raise missing_extra("Lightning", "lightning") from None

__all__ = ["TrainlensCallback"]


class TrainlensCallback(Callback):
    """Watch a Lightning fit. After it: `callback.lens` (findings, drill, run_dir)."""

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
        self._count = -1
        self._logged = False

    @property
    def lens(self) -> Any:
        """The last watched run (`trainlens.Lens`), or None before the first fit."""
        return self._session.last

    # --- opening and closing ---------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        if len(optimizers) > 1:
            warnings.warn(
                f"trainlens watches one optimizer; this LightningModule has "
                f"{len(optimizers)} and only the first is watched",
                UserWarning,
                stacklevel=2,
            )
        self._session.start(pl_module, optimizers[0] if optimizers else None)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._session.stop(None)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._session.stop(exception)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._session.stop(None)  # fit ended without on_fit_end (interrupted): still write

    # --- batches -----------------------------------------------------------------------
    def _batch_start(self, split: str) -> None:
        state = self._session.state
        if state is None:
            return
        state.split_override = split
        self._count = self._session.losses_logged()
        self._logged = False

    def _batch_end(self, split: str, outputs: Any) -> None:
        state = self._session.state
        if state is None:
            return
        if not self._logged and self._session.losses_logged() == self._count:
            self._session.log_loss(_detached(loss_of(outputs)), split)
        state.split_override = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int):
        self._batch_start("train")

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        # inside the optimizer step, so the loss lands on its own step; Lightning has
        # divided it by accumulate_grad_batches for the backward pass
        if self._session.state is None or self._logged:
            return
        if self._session.losses_logged() == self._count:
            scale = getattr(trainer, "accumulate_grad_batches", 1) or 1
            self._session.log_loss(_detached(loss) * scale, "train")
            self._logged = True

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch_end("train", outputs)

    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._batch_start("val")

    def on_validation_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch_end("val", outputs)


def _detached(loss: Any) -> Any:
    return loss.detach() if hasattr(loss, "detach") else loss
