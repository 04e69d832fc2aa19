"""Evidence for a loss that does not move: what the loss is fed, and stale gradients.

`LossInputProbe` looks at the input and target of `CrossEntropyLoss`, `NLLLoss` and
`MSELoss` on sampled steps: whether the input rows are already probabilities or
log-probabilities (rows summing to 1, or whose exp sums to 1), and the loss of the best
constant prediction for the batch's targets (class-prior entropy, target variance).

`GradCarryProbe` looks at each parameter's `.grad` right before the first backward pass
of a sampled optimizer step adds to it: a gradient still there was not reset after the
previous step. Gradient accumulation zeroes after each step, so it carries nothing.

Both keep their statistics on the device and hand them to `state.deferred`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.utils.hooks import RemovableHandle

from ._loss import loss_name
from ._state import _SUSPENDED, WatchState

#: losses whose input and target reveal a bug of the input pipeline or the head
CLASSIFICATION_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)
REGRESSION_LOSSES = (nn.MSELoss,)


class LossInputProbe:
    def __init__(self, state: WatchState):
        self.state = state
        self.handles: list[RemovableHandle] = []
        self._seen: dict[tuple[int, str], int] = {}  # (loss id, split) -> last step recorded

    def install(self) -> None:
        self.handles.append(nn.modules.module.register_module_forward_hook(self._on_forward))

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if _SUSPENDED[0] or not self.state.sampled:
            return
        if not isinstance(module, CLASSIFICATION_LOSSES + REGRESSION_LOSSES) or len(args) < 2:
            return
        x, t = args[0], args[1]
        if not (isinstance(x, torch.Tensor) and isinstance(t, torch.Tensor)):
            return
        if not x.is_floating_point() or x.numel() == 0 or t.numel() == 0:
            return
        state = self.state
        split = state.split()
        key = (id(module), split)
        if self._seen.get(key) == state.step:
            return  # one look per loss and step: a per-token loop stays cheap
        self._seen[key] = state.step
        with torch.no_grad():
            if isinstance(module, CLASSIFICATION_LOSSES):
                classes, stats = _classification_stats(module, x.detach(), t.detach())
            else:
                classes, stats = 0, _regression_stats(module, x.detach(), t.detach())
        if stats is None:
            return
        state.deferred.add(
            state.tables["loss_inputs"],
            [(state.step, split, loss_name(state, module), type(module).__name__, classes)],
            stats[None],
        )


def _classification_stats(
    module: nn.Module, x: torch.Tensor, t: torch.Tensor
) -> tuple[int, torch.Tensor | None]:
    cdim = 1 if x.dim() >= 2 else 0
    classes = x.shape[cdim]
    xf = x.float()
    prob_dev = (xf.sum(cdim) - 1).abs().mean()
    logprob_dev = torch.logsumexp(xf, cdim).abs().mean()
    nan = torch.full((), math.nan, device=x.device)
    baseline = nan
    if getattr(module, "reduction", "mean") == "mean" and getattr(module, "weight", None) is None:
        if not t.is_floating_point():
            # class indices: count them without boolean indexing (no host sync)
            ignore = getattr(module, "ignore_index", -100)
            valid = ((t >= 0) & (t < classes) & (t != ignore)).reshape(-1).float()
            idx = t.reshape(-1).clamp(0, classes - 1).long()
            counts = torch.zeros(classes, device=x.device).scatter_add_(0, idx, valid)
            prior = counts / counts.sum().clamp_min(1)
        elif t.shape == x.shape:
            prior = t.float().movedim(cdim, -1).reshape(-1, classes).mean(0)
        else:
            prior = None
        if prior is not None:
            eps = float(getattr(module, "label_smoothing", 0.0) or 0.0)
            q = (1 - eps) * prior + eps / classes
            # the loss of the best constant prediction (predict the prior) is its entropy
            baseline = -(q * torch.log(q.clamp_min(1e-12))).sum()
    stats = torch.stack([xf.min(), xf.max(), prob_dev, logprob_dev, baseline.to(xf.device)])
    return classes, stats


def _regression_stats(module: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
    if t.shape != x.shape or t.dim() == 0 or t.shape[0] < 2 or not t.is_floating_point():
        return None
    xf, tf = x.float(), t.float()
    nan = torch.full((), math.nan, device=x.device)
    # predicting the mean target for every sample scores the target variance under MSE
    baseline = tf.var(0, unbiased=False).mean() if module.reduction == "mean" else nan
    return torch.stack([xf.min(), xf.max(), nan, nan, baseline])


class GradCarryProbe:
    def __init__(self, state: WatchState):
        self.state = state
        self.handles: list[RemovableHandle] = []
        self._task: int | None = None
        self._step = -1
        self._carried: list[torch.Tensor] = []
        self._new: list[torch.Tensor] = []

    def install(self) -> None:
        state = self.state
        if state.optimizer is None:
            return  # without an optimizer a step is a backward pass: nothing to carry over
        self.handles.append(state.optimizer.register_step_post_hook(self._post_step))
        if any(is_lazy(p) for p in state.model.parameters()):

            def after_first_forward(module: Any, args: Any, output: Any) -> None:
                once.remove()
                self._track()

            once = state.model.register_forward_hook(after_first_forward)
            self.handles.append(once)
        else:
            self._track()

    def _track(self) -> None:
        # `optimizer.zero_grad()` resets only its own parameters: look at those alone
        in_opt = {id(p) for group in self.state.optimizer.param_groups for p in group["params"]}
        for p in self.state.model.parameters():
            if p.requires_grad and not is_lazy(p) and id(p) in in_opt:
                self.handles.append(p.register_hook(self._hook(p)))

    def _hook(self, p: torch.Tensor):
        def hook(grad: torch.Tensor) -> None:
            state = self.state
            if _SUSPENDED[0] or not state.sampled:
                return
            task = torch._C._current_graph_task_id()
            if self._task is None:
                self._task, self._step = task, state.step
            elif task != self._task:
                return  # a later backward pass of this step: accumulating on purpose
            with torch.no_grad():
                old = p.grad
                # norm now: autograd adds the new gradient into `.grad` in place afterwards
                if old is None:
                    self._carried.append(torch.zeros((), device=grad.device))
                else:
                    self._carried.append(_norm(old).to(grad.device))
                self._new.append(_norm(grad))

        return hook

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if _SUSPENDED[0]:
            return
        if self._new:
            with torch.no_grad():
                device = self._new[0].device
                carried = torch.stack([c.to(device) for c in self._carried])
                new = torch.stack([n.to(device) for n in self._new])
                stats = torch.stack(
                    [
                        carried.square().sum().sqrt(),
                        new.square().sum().sqrt(),
                        (carried > 0).float().mean(),
                    ]
                )
            self.state.deferred.add(self.state.tables["grad_carry"], [(self._step,)], stats[None])
        self._task, self._carried, self._new = None, [], []


def _norm(g: torch.Tensor) -> torch.Tensor:
    g = g.coalesce().values() if g.is_sparse else g
    return torch.linalg.vector_norm(g.detach(), dtype=torch.float32)
