"""Lightning: `Trainer(callbacks=[TrainlensCallback()])` watches `trainer.fit`.

The watch opens at `on_fit_start` (Lightning has created the optimizer by then, and the
sanity-check validation has not run yet, so a shape bug that crashes there gets its
drill) and closes at `on_fit_end`, or at `on_exception` with the exception. The split
comes from Lightning's loops: training batches are "train", validation batches "val".
Losses: `nn` loss modules and `torch.nn.functional` losses are captured as in any
watched run; otherwise the loss `training_step` returns (or hands to backward), and the
validation loss a `validation_step` returns or logs (`self.log("val_loss", loss)`, read
from `trainer.callback_metrics` when validation ends). The run dir defaults to
`<trainer.log_dir>/trainlens/<run_id>`, and the drill's headline (status, symptom,
cause, drill path) goes to the trainer's loggers as hyperparameters.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from ._session import SessionCallback, headline, loss_of, missing_extra

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError:
        raise missing_extra("Lightning", "lightning") from None

__all__ = ["TrainlensCallback"]


class TrainlensCallback(SessionCallback, Callback):
    """Watch a Lightning fit. After it: `callback.lens` (findings, drill, run_dir).

    `TrainlensCallback(run_dir=None, *, run_id=None, sample_every=..., plugins=(),
    quiet=False)`: the arguments of `trainlens.watch`.
    """

    def _start_state(self) -> None:
        self._count = -1
        self._logged = False

    # --- opening and closing ---------------------------------------------------------
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        if len(optimizers) > 1:
            warnings.warn(
                f"trainlens watches one optimizer; this LightningModule has "
                f"{len(optimizers)} and only the first is watched",
                UserWarning,
                stacklevel=2,
            )
        self._session.start(pl_module, optimizers[0] if optimizers else None, _log_dir(trainer))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._stop(trainer, None)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._stop(trainer, exception)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._stop(trainer, None)  # fit ended without on_fit_end (interrupted): still write

    def _stop(self, trainer: Any, exc: BaseException | None) -> None:
        lens = self._session.stop(exc)
        if lens is not None:
            _to_loggers(trainer, headline(lens))

    # --- batches -----------------------------------------------------------------------
    def _batch_start(self, split: str) -> None:
        if not self._session.open:
            return
        self._session.set_split(split)
        self._count = self._session.losses_logged()
        self._logged = False

    def _batch_end(self, split: str, outputs: Any) -> None:
        if not self._session.open:
            return
        if not self._logged and self._session.losses_logged() == self._count:
            self._session.log_loss(_detached(loss_of(outputs)), split)
        self._session.set_split(None)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int):
        self._batch_start("train")

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        # inside the optimizer step, so the loss lands on its own step; Lightning has
        # divided it by accumulate_grad_batches for the backward pass
        if not self._session.open or self._logged:
            return
        if self._session.losses_logged() == self._count:
            scale = getattr(trainer, "accumulate_grad_batches", 1) or 1
            self._session.log_loss(_detached(loss) * scale, "train")
            self._logged = True

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch_end("train", outputs)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._val_count = self._session.losses_logged()

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

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        # `self.log("val_loss", loss)` without returning it: no loss was seen in the
        # validation batches; the epoch's logged value is the validation loss
        if not self._session.open or getattr(trainer, "sanity_checking", False):
            return
        if self._session.losses_logged() != getattr(self, "_val_count", -2):
            return
        value = logged_loss(getattr(trainer, "callback_metrics", None) or {}, "val")
        if value is not None:
            self._session.log_loss(_detached(value), "val")


#: names a logged validation loss goes by: val_loss, val/loss, valid_loss_epoch, loss/val
_VAL_KEY = re.compile(r"(^|[/_.\-])(val|valid|validation|eval)([/_.\-]|$)", re.IGNORECASE)


def logged_loss(metrics: Any, split: str) -> Any:
    """The logged loss of `split` in a metrics dict: the shortest key naming both."""
    keys = [
        k
        for k in metrics
        if isinstance(k, str)
        and "loss" in k.lower()
        and bool(_VAL_KEY.search(k)) == (split == "val")
    ]
    for key in sorted(keys, key=len):
        value = metrics[key]
        if hasattr(value, "numel") and value.numel() == 1:
            return value
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _log_dir(trainer: Any) -> str | None:
    try:
        return trainer.log_dir or getattr(trainer, "default_root_dir", None)
    except Exception:  # a logger without a folder
        return getattr(trainer, "default_root_dir", None)


def _to_loggers(trainer: Any, facts: dict[str, Any] | None) -> None:
    """The drill's headline as hyperparameters of every logger (text logs as params)."""
    if not facts:
        return
    for logger in getattr(trainer, "loggers", None) or []:
        try:
            logger.log_hyperparams(facts)
            logger.save()
        except Exception as err:
            warnings.warn(
                f"trainlens could not send the drill's headline to {type(logger).__name__}: "
                f"{type(err).__name__}: {err}",
                RuntimeWarning,
                stacklevel=2,
            )


def _detached(loss: Any) -> Any:
    return loss.detach() if hasattr(loss, "detach") else loss
