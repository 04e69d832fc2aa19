"""Gradients carried over from earlier steps: `optimizer.zero_grad()` missing.

`GradCarryProbe` looks at the optimizer's parameters' `.grad` when the first backward
pass of a sampled optimizer step is about to add to them (its first parameter hook, before
any accumulation), and again at `optimizer.step()`: a gradient still there at the start was
not reset after the previous step. Gradient accumulation zeroes after each step, so it
carries nothing. A reset later in the step (`zero_grad()` between two backward passes, as a
GAN's discriminator step does after the generator's pass) starts the reading again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.parameter import is_lazy

from ._base import Probe, guarded
from ._state import WatchState
from ._tensors import dense_values, float32_norms


class GradCarryProbe(Probe):
    name = "grad_carry"
    writes = ("grad_carry",)

    def __init__(self, state: WatchState):
        super().__init__(state)
        self.params: list[torch.Tensor] = []
        self._task: bool | None = None
        self._step = -1
        self._carried: torch.Tensor | None = None
        self._zeroed = 0  # `state.zero_grads` when the carried gradients were read
        self._nothing_rows = _NothingCarried(state.tables["grad_carry"])
        # positions of self.params in the StepProbe's parameter list (found once)
        self._shared: tuple[list[torch.Tensor], list[int] | None] | None = None

    def install(self) -> None:
        state = self.state
        if state.optimizer is None:
            return  # without an optimizer a step is a backward pass: nothing to carry over
        # at the watched optimizer's step, through the step's end: no hook of its own, so
        # an unsampled step, which has nothing to read, pays one attribute test
        state.step_listeners.append(self._after_step)
        self.handles.append(_Unlisten(state.step_listeners, self._after_step))
        state.backwards.first_grad(self, self._on_grad, sampled=True)
        if any(is_lazy(p) for p in state.model.parameters()):

            def after_first_forward(module: Any, args: Any, output: Any) -> None:
                once.remove()
                self._track()

            once = state.model.register_forward_hook(after_first_forward)
            self.handles.append(once)
        else:
            self._track()

    @guarded
    def _track(self) -> None:
        # `optimizer.zero_grad()` resets only its own parameters: look at those alone
        in_opt = {id(p) for group in self.state.optimizer.param_groups for p in group["params"]}
        self.params = [
            p
            for p in self.state.model.parameters()
            if p.requires_grad and not is_lazy(p) and id(p) in in_opt
        ]

    def _on_grad(self, grad: torch.Tensor) -> None:
        """The first parameter gradient of a backward pass, before it adds to any `.grad`.

        What counts is what the step's own passes found: the first pass of the step, or a
        later one if the gradients were reset in between. A GAN's generator loss runs
        backward through the discriminator before `optD.zero_grad()`, and the
        discriminator's own pass comes after it: that pass starts from nothing. A later
        pass that finds the gradients in place (accumulation) keeps the first's reading.
        """
        state = self.state
        if not state.sampled:
            return
        # a list of bools, not a generator: one Python frame, not one resumption a
        # parameter (and not `.count(None)`, which compares each tensor with a torch op)
        cleared = all([p.grad is None for p in self.params])
        if self._task is not None and state.zero_grads == self._zeroed and not cleared:
            return  # accumulating onto this step's earlier passes
        self._task, self._step, self._zeroed = True, state.step, state.zero_grads
        if cleared:
            self._carried = _NOTHING  # zero_grad(set_to_none=True): no kernel needed
            return
        with torch.no_grad():
            self._carried = _total_norm(self.params, grad.device)

    def _after_step(self) -> None:
        if self._task is not None or self._carried is not None:
            self._post_step()

    @guarded
    def _post_step(self) -> None:
        carried = self._carried
        if carried is _NOTHING:
            now = self._shared_norm(None)
            if now is None:
                with torch.no_grad():
                    now = _total_norm(self.params, None)[0]
            # (step, 0, now, 0): the zeros are added on the host at the flush
            self.state.deferred.add_scalar(self._nothing_rows, (self._step,), now)
        elif carried is not None:
            with torch.no_grad():
                now = self._shared_norm(carried.device)
                if now is None:
                    now = _total_norm(self.params, carried.device)[0]
                stats = torch.stack([carried[0], now, carried[1]])
            self.state.deferred.add_row(self.state.tables["grad_carry"], (self._step,), stats)
        self._task, self._carried = None, None

    def _shared_norm(self, device: torch.device | None) -> torch.Tensor | None:
        """The norm of all `.grad`s from the norms StepProbe took at this step, if it did:
        the gradients are the same ones, and a norm of a large model costs a pass over
        all of them."""
        shared = self.state.grad_norms
        if shared is None or shared[0] != self._step:
            return None
        _, params, has_grad, norms = shared
        if self._shared is None or self._shared[0] is not params:
            where = {id(p): i for i, p in enumerate(params)}
            idx = [where.get(id(p)) for p in self.params]
            self._shared = (params, None if None in idx else idx)  # type: ignore[arg-type]
        idx = self._shared[1]
        if idx is None:
            return None
        if len(idx) != len(params):
            has_grad = [has_grad[i] for i in idx]
            norms = [norms[i] for i in idx]
        present = [n for n, h in zip(norms, has_grad, strict=True) if h]
        if not present:
            return None if device is None else torch.zeros((), device=device)
        device = present[0].device if device is None else device
        if len({n.device for n in present}) > 1 or present[0].device != device:
            return None
        return torch.linalg.vector_norm(torch.stack(present))


class _Unlisten:
    """The removal of a step listener, with the `remove()` of a `RemovableHandle`."""

    def __init__(self, listeners: list[Any], fn: Any):
        self._listeners, self._fn = listeners, fn

    def remove(self) -> None:
        if self._fn in self._listeners:
            self._listeners.remove(self._fn)


#: the carried-over gradients were None at the start of the step: nothing carried
_NOTHING = object()


class _NothingCarried:
    """Deferred sink for a step that started without gradients: (step, 0, now, 0)."""

    def __init__(self, table: Any):
        self.table = table

    def append(self, step: int, now: float) -> None:
        self.table.append(step, 0.0, now, 0.0)


def _total_norm(params: list[torch.Tensor], device: torch.device | None) -> torch.Tensor:
    """[norm of all `.grad`s together, share of parameters holding a non-zero one]."""
    grads = [dense_values(p.grad) for p in params if p.grad is not None]
    if not grads:
        if device is None:
            device = params[0].device if params else torch.device("cpu")
        return torch.zeros(2, device=device)
    norms = float32_norms(grads)
    device = norms[0].device if device is None else device
    if len({n.device for n in norms}) > 1 or norms[0].device != device:
        norms = [n.to(device) for n in norms]
    norms_t = torch.stack(norms)
    # the 2-norm of the norms is the norm of all together; the 0-norm counts non-zero ones
    share = torch.linalg.vector_norm(norms_t, 0) / len(params)
    return torch.stack([torch.linalg.vector_norm(norms_t), share])
