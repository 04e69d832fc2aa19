"""Hugging Face: `Trainer(..., callbacks=[TrainlensCallback(run_dir=...)])`.

The watch opens at `on_train_begin` (the Trainer has built its optimizer; accelerate's
wrapper is looked through). Hugging Face models compute their loss inside `forward`,
with an `nn` loss module or `torch.nn.functional.cross_entropy`, both captured like in
any watched run; a forward hook on the model logs `output.loss` of a call whose loss was
not seen otherwise: "train" while training, "val" in `evaluate` (eval mode, no grad).

The Trainer has no exception event, and its own tqdm bar is closed by the last
`on_train_end` callback. So when the callback is passed to `Trainer(callbacks=[...])`, it
wraps that trainer's `train` (found at `on_init_end`): the drill is written when `train()`
returns or when an exception leaves it (same exception, re-raised), after the bar is
closed. A callback added later with `trainer.add_callback` closes at `on_train_end`
(printing its summary through `tqdm.write`), and a crash is written when the next
training starts or at interpreter exit. The run dir defaults to
`<args.output_dir>/trainlens/<run_id>`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
from typing import Any

from .._probes._state import compiling, is_suspended
from ._session import SessionCallback, loss_of, missing_extra

try:
    from transformers import TrainerCallback
except ImportError:
    raise missing_extra("transformers", "transformers") from None

__all__ = ["TrainlensCallback"]


class TrainlensCallback(SessionCallback, TrainerCallback):
    """Watch `transformers.Trainer.train`. After it: `callback.lens`.

    `TrainlensCallback(run_dir=None, *, run_id=None, sample_every=..., plugins=(),
    quiet=False)`: the arguments of `trainlens.watch`.
    """

    def _start_state(self) -> None:
        self._handles: list[Any] = []
        self._counts: list[int] = []
        self._wrapped: set[int] = set()  # ids of the trainers whose train() we wrapped
        self._in_wrapped_train = False

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = _calling_trainer()
        if trainer is None or id(trainer) in self._wrapped:
            return
        self._wrapped.add(id(trainer))
        original = trainer.train

        @functools.wraps(original)
        def train(*a: Any, **kw: Any) -> Any:
            self._in_wrapped_train = True
            try:
                result = original(*a, **kw)
            except BaseException as exc:
                self._finish(exc)
                raise
            finally:
                self._in_wrapped_train = False
            self._finish(None)
            return result

        trainer.train = train

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if model is None:
            return
        self._remove_hooks()
        lens = self._session.start(model, optimizer, getattr(args, "output_dir", None))
        root = lens.model  # DDP / compile wrappers looked through
        self._handles = [
            root.register_forward_pre_hook(self._pre),
            root.register_forward_hook(self._post),
        ]

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._remove_hooks()
        if self._in_wrapped_train:
            return  # the train() wrapper writes the drill once the progress bar is closed
        if not self._session.open:
            return
        if self._session.kwargs["quiet"]:
            self._session.stop(None)
            return
        # the progress bar is still open: print the summary through tqdm, not across it
        captured = io.StringIO()
        with contextlib.redirect_stderr(captured):
            self._session.stop(None)
        _write_above_bars(captured.getvalue())

    def _finish(self, exc: BaseException | None) -> None:
        self._remove_hooks()
        try:
            self._session.stop(exc)
        except Exception:
            if exc is None:
                raise
            # never let trainlens's trouble replace the user's exception (watch warns)

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


def _calling_trainer() -> Any:
    """The `transformers.Trainer` whose `__init__` fires `on_init_end` (a few frames up)."""
    try:
        from transformers import Trainer
    except ImportError:  # pragma: no cover - this module needs transformers
        return None
    frame = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None


def _write_above_bars(text: str) -> None:
    if not text:
        return
    try:
        from tqdm.auto import tqdm

        tqdm.write(text.rstrip("\n"), file=sys.stderr)
    except ImportError:  # pragma: no cover - transformers depends on tqdm
        sys.stderr.write("\n" + text)
