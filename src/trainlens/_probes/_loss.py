"""Loss capture: every `torch.nn` loss module called inside the block, with no extra line;
a loss written by hand is read from the root of its `backward()` (`_backward_loss`).

A global forward hook sees loss modules that are not part of the model (the usual
`loss_fn = nn.CrossEntropyLoss()`), user subclasses of `_Loss` included. It also checks
that elementwise losses get input and target of the same shape: `MSELoss` on `[N, 1]`
against `[N]` silently broadcasts to `[N, N]` and only warns.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.modules.loss import _Loss

from . import _backward_loss
from ._base import Probe, guarded
from ._state import WatchState
from ._tensors import int_range, tensor_leaves

#: the source name of a loss read from the root of `backward()` (a loss written by hand)
BACKWARD_SOURCE = "backward()"
#: hand-written losses whose reduction is described for the rules (its shapes are fixed)
MAX_ROOTS = 3
#: backward passes of the first sampled steps checked for a negated loss (`-loss`): a
#: loop that climbs its loss does so from the first step
NEGATION_PASSES = 8
#: losses that compare input and target element by element: their shapes must match
ELEMENTWISE_LOSSES = (
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.BCELoss,
    nn.BCEWithLogitsLoss,
    nn.SoftMarginLoss,
    nn.PoissonNLLLoss,
    nn.KLDivLoss,
)


def loss_name(state: WatchState, module: nn.Module) -> str:
    """A loss inside the model goes by its dotted name, one outside by its class.

    A functional loss (`_functional_loss.py`) is shown as a stand-in module named after
    the function it stands for (`F.cross_entropy`).
    """
    # the instance dict: a missing attribute through `nn.Module.__getattr__` costs an
    # exception, a few microseconds on every step
    functional = module.__dict__.get("_trainlens_name")
    if functional is not None:
        return functional
    return state.module_names.get(id(module), type(module).__name__)


class LossProbe(Probe):
    name = "losses"
    writes = ("losses",)

    def __init__(self, state: WatchState):
        super().__init__(state)
        self._checked: set[tuple[str, Any, Any]] = set()
        self.count = 0  # losses logged so far (integrations log a loss only if none came)
        self._recent: list[tuple[int, torch.Tensor]] = []
        self._train_step = -1  # the last step a training loss was logged by name
        self._roots: list[dict[str, Any]] = []  # `root_reduction` of the first roots read
        self._read_roots = True
        # (step, {id of the autograd node of a loss value logged then: the value}): sampled
        # steps only, to tell a backward pass run on the loss's negation (`-loss`)
        self._nodes: tuple[int, dict[int, torch.Tensor]] = (-1, {})
        # backward passes of sampled steps from a logged loss: all of them, and those run
        # on its negation (run.json `negated_loss`)
        self._negated = {"passes": 0, "negated": 0, "first_step": None}

    def install(self) -> None:
        # every loss module of the run's threads, also when its forward raises
        self.state.forwards.loss(self, self._on_forward, always=True)
        # and, for a loss written by hand, the root of a backward pass into the model
        self.handles.append(_backward_loss.subscribe(self))
        self.state.backwards.first_grad(self, self._on_first_grad)

    # --- the root of a backward pass (`_backward_loss`) -----------------------------------
    def _on_first_grad(self, grad: torch.Tensor) -> None:
        """The scalar root of a `backward()` that reached the watched parameters is the
        step's loss, unless a loss module, a functional loss or `lens.log_loss` gave one
        this step (a regulariser added to it would be counted twice)."""
        state = self.state
        step = state.step
        if not self._read_roots:
            return
        if self._train_step == step:
            if state.sampled and self._nodes[0] == step:
                self._check_negated(step)
            return
        try:
            root = _backward_loss.current_root(state.threads)
        except Exception as err:  # reading frames failed: module losses go on being seen
            self._read_roots = False
            state.event("backward_root_off", None, f"backward roots not read: {type(err).__name__}")
            return
        if root is None or root.numel() != 1 or not root.is_floating_point() or root.is_meta:
            return
        # grad is off inside the engine: the split is the one the loss was made in, with
        # grad on (it has a graph) and the model in the mode of its last such forward
        training = state.forward_training
        if training is None:
            training = state.model.training
        split = state.split_override or ("train" if training else "val")
        self._log(_backward_loss.unscaled(root), split, BACKWARD_SOURCE, step=step)
        if len(self._roots) < MAX_ROOTS:  # what the loss reduced, for a broadcast
            facts = _backward_loss.root_reduction(root)  # scaled: a Mul above it
            if facts is not None:
                self._roots.append({"step": step, **facts})
                state.extra_meta["backward_roots"] = self._roots

    def _check_negated(self, step: int) -> None:
        """Whether this backward pass runs on minus a loss logged this step: `-loss`,
        `loss * -1`. The optimizer then descends the negation, and so climbs the loss."""
        try:
            self._negation(step)
        except Exception:  # an autograd node read mid-backward: no count, the probe goes on
            return

    def _negation(self, step: int) -> None:
        root = _backward_loss.current_root(self.state.threads)
        node = getattr(root, "grad_fn", None)
        if node is None:
            return
        nodes = self._nodes[1]
        if id(node) in nodes:
            negated = False  # `loss.backward()`
        elif (
            node.name() in ("NegBackward0", "MulBackward0")
            and node.next_functions
            and id(inner := node.next_functions[0][0]) in nodes
        ):
            if node.name() == "NegBackward0":
                negated = True
            else:
                # `loss * c`: the node ran (and freed its constant) before this hook; the
                # two values tell the sign of c, read where that needs no sync
                value = nodes[id(inner)]
                if root.device.type != "cpu" or value.device.type != "cpu":
                    return
                negated = float(root.detach()) * float(value) < 0
        else:
            return  # a root that is no logged loss (a sum of several): not counted
        counts = self._negated
        counts["passes"] += 1
        if negated:
            counts["negated"] += 1
            if counts["first_step"] is None:
                counts["first_step"] = step
        self.state.extra_meta["negated_loss"] = counts

    def _log(
        self, loss: torch.Tensor | float, split: str | None, source: str, step: int | None = None
    ) -> None:
        state = self.state
        step = state.step if step is None else step
        recent = self._recent  # the losses captured this step, so logging one by hand
        if recent and recent[0][0] != step:  # does not double it
            recent.clear()
        is_tensor = isinstance(loss, torch.Tensor)
        value = loss.detach() if is_tensor else None
        if source == "log_loss":
            if _seen_already(recent, step, loss):
                return  # `lens.log_loss(F.cross_entropy(...))`: captured already, once is enough
        elif is_tensor and len(recent) < 8:
            recent.append((step, value))
        self.count += 1
        split = split or state.split()
        if split == "train" and source != BACKWARD_SOURCE:
            self._train_step = step
        if value is None:
            value = torch.tensor(float(loss))
        elif value.numel() != 1:
            value = value.float().mean()
        # always deferred, so rows stay in the order the losses were seen
        state.deferred.add_scalar(state.tables["losses"], (step, split, source), value)
        if state.loss_listeners:
            for listener in tuple(state.loss_listeners.values()):
                listener(split, value)

    #: `lens.log_loss` and the integrations; the loss-module hook calls `_log` behind the
    #: dispatch's own guard
    log = guarded(_log)

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not isinstance(module, _Loss):
            return
        state = self.state
        name = loss_name(state, module)
        if output is None:
            exc = state.exception_in_flight()
            if exc is not None:
                self._record_failure(exc, name, module, args)
                return
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            self._log(output, None, name)
            if (
                state.sampled
                and self._negated["passes"] < NEGATION_PASSES
                and output.grad_fn is not None
            ):
                step, nodes = self._nodes
                if step != state.step:
                    self._nodes = (state.step, nodes := {})
                if len(nodes) < 8:
                    nodes[id(output.grad_fn)] = output.detach()
        if isinstance(module, ELEMENTWISE_LOSSES) and len(args) >= 2:
            self._check_shapes(name, module, args[0], args[1])

    def _check_shapes(self, name: str, module: nn.Module, pred: Any, target: Any) -> None:
        if not (isinstance(pred, torch.Tensor) and isinstance(target, torch.Tensor)):
            return
        if pred.shape == target.shape:
            return
        key = (name, pred.shape, target.shape)  # by name: a loss made anew each step is one
        if key in self._checked:
            return
        self._checked.add(key)
        what = getattr(module, "_trainlens_name", None) or type(module).__name__
        try:
            broadcast = list(torch.broadcast_shapes(pred.shape, target.shape))
        except RuntimeError:
            return  # does not broadcast: the loss raises, and the failure is recorded
        self.state.event(
            "loss_broadcast",
            name,
            f"{what} got input {list(pred.shape)} and target "
            f"{list(target.shape)}, broadcast to {broadcast}",
            loss=what,
            input=list(pred.shape),
            target=list(target.shape),
            broadcast=broadcast,
            inflation=math.prod(broadcast) / max(1, max(pred.numel(), target.numel())),
            split=self.state.split(),
        )

    def _record_failure(
        self, exc: BaseException, name: str, module: nn.Module, args: tuple[Any, ...]
    ) -> None:
        ins = tensor_leaves(args)
        self.state.record_failure(
            exc, "loss", name, type(module).__name__, ins, path=[name],
            int_range=int_range(ins[1:2]),  # the target's class ids, for one out of range
        )  # fmt: skip


def _seen_already(recent: Any, step: int, loss: Any) -> bool:
    """Is `loss` (a tensor, a view of it, or its `.item()`) a loss captured this step?"""
    for seen_step, seen in recent:
        if seen_step != step:
            continue
        if isinstance(loss, torch.Tensor):
            if (
                loss.device == seen.device
                and loss.shape == seen.shape
                and loss.untyped_storage().data_ptr() == seen.untyped_storage().data_ptr()
                and loss.storage_offset() == seen.storage_offset()
            ):
                return True
        elif (
            isinstance(loss, (int, float))
            and seen.numel() == 1
            and float(seen) == float(loss)  # the caller read it already: no new sync
        ):
            return True
    return False
