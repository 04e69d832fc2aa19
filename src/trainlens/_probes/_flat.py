"""Evidence for a loss that does not move: what the loss is fed, and stale gradients.

`LossInputProbe` looks at the input and target of `CrossEntropyLoss`, `NLLLoss` and
`MSELoss` on sampled steps: whether the input rows are already probabilities or
log-probabilities (rows summing to 1, or whose exp sums to 1), and the loss of the best
constant prediction for the targets seen so far (class-prior entropy, target variance).

`GradCarryProbe` looks at the optimizer's parameters' `.grad` when the first backward
pass of a sampled optimizer step is about to add to them (its first parameter hook, before
any accumulation), and again at `optimizer.step()`: a gradient still there at the start was
not reset after the previous step. Gradient accumulation zeroes after each step, so it
carries nothing.

Both keep their statistics on the device and hand them to `state.deferred`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from ._base import Probe, guarded, hook
from ._loss import loss_name
from ._state import WatchState
from ._tensors import dense_values, float32_norms, has_values

#: losses whose input and target reveal a bug of the input pipeline or the head
CLASSIFICATION_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss, nn.BCEWithLogitsLoss)
REGRESSION_LOSSES = (nn.MSELoss,)
#: rows of a classification loss's input whose statistics are taken (a large-vocabulary
#: LM's logits are [batch * seq, vocab]: a slice tells probabilities from logits as well)
MAX_ROWS = 1024


class LossInputProbe(Probe):
    name = "loss_inputs"

    def __init__(self, state: WatchState):
        super().__init__(state)
        self._seen: dict[tuple[int, str], int] = {}  # (loss id, split) -> last step recorded
        # (loss id, split) -> running target statistics over the sampled steps, on device:
        # the prior of one batch underestimates the entropy of many classes
        self._running: dict[tuple[int, str], dict[str, Any]] = {}

    def install(self) -> None:
        self.state.forwards.loss(self, self._on_forward)

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self.state.sampled:
            return
        if not isinstance(module, CLASSIFICATION_LOSSES + REGRESSION_LOSSES) or len(args) < 2:
            return
        x, t = args[0], args[1]
        if not (isinstance(x, torch.Tensor) and isinstance(t, torch.Tensor)):
            return
        if not x.is_floating_point() or x.numel() == 0 or t.numel() == 0:
            return
        if not (has_values(x) and has_values(t)):
            return  # sparse, nested or meta: no statistics to take
        state = self.state
        split = state.split()
        key = (id(module), split)
        if self._seen.get(key) == state.step:
            return  # one look per loss and step: a per-token loop stays cheap
        self._seen[key] = state.step
        running = self._running.setdefault(key, {})
        # detached tensors record no graph: no `no_grad()` context (~9 Python calls)
        if isinstance(module, CLASSIFICATION_LOSSES):
            classes, stats = _classification_stats(module, x.detach(), t.detach(), running)
        else:
            classes = 0
            stats = _regression_stats(module, x.detach(), t.detach(), running)
        if stats is None:
            return
        state.deferred.add(
            state.tables["loss_inputs"],
            [(state.step, split, loss_name(state, module), type(module).__name__, classes)],
            stats[None],
        )


def _classification_stats(
    module: nn.Module, x: torch.Tensor, t: torch.Tensor, running: dict[str, Any]
) -> tuple[int, torch.Tensor | None]:
    if isinstance(module, nn.BCEWithLogitsLoss):
        # it applies the sigmoid itself: inputs all in [0, 1] are sigmoid outputs; the best
        # constant prediction (the mean target) scores its binary entropy
        xf = x.reshape(-1)[: MAX_ROWS * 64].float()
        nan = torch.full((), math.nan, device=x.device)
        baseline = nan
        plain = module.reduction == "mean" and module.weight is None and module.pos_weight is None
        if plain and t.shape == x.shape and t.is_floating_point() and t.dim() >= 1:
            tf = t.float()
            if running.get("shape") != tf.shape[1:]:
                running.update(shape=tf.shape[1:], n=0, sum=0.0)
            running["n"] += tf.shape[0]
            running["sum"] = running["sum"] + tf.sum(0)
            p = (running["sum"] / running["n"]).clamp(1e-7, 1 - 1e-7)
            baseline = -(p * p.log() + (1 - p) * (1 - p).log()).mean()
        return 2, torch.stack([xf.min(), xf.max(), nan, nan, baseline])
    cdim = 1 if x.dim() >= 2 else 0
    classes = x.shape[cdim]
    # the row statistics of a slice suffice; every target counts for the prior
    xf = (x[:MAX_ROWS] if x.dim() >= 2 else x).float()
    # few kernels: both row deviations in one stack, one |.| and one mean
    rows = torch.stack([xf.sum(cdim) - 1, torch.logsumexp(xf, cdim)])
    devs = rows.abs().reshape(2, -1).mean(1)
    baseline = None
    if getattr(module, "reduction", "mean") == "mean" and getattr(module, "weight", None) is None:
        mass = None
        if not t.is_floating_point():
            # class indices: count them without boolean indexing (no host sync). The
            # forward succeeded, so every target is a class or the ignore index
            ignore = getattr(module, "ignore_index", -100)
            valid = (t != ignore).reshape(-1).float()
            idx = t.reshape(-1).clamp(0, classes - 1)
            if idx.dtype != torch.int64:
                idx = idx.long()
            mass = torch.zeros(classes, device=x.device).scatter_add_(0, idx, valid)
        elif t.shape == x.shape:
            mass = t.float().movedim(cdim, -1).reshape(-1, classes).sum(0)
        if mass is not None:
            total = running.get("mass")
            total = mass if total is None or total.shape != mass.shape else total + mass
            running["mass"] = total
            q = total / total.sum().clamp_min(1e-12)
            eps = float(getattr(module, "label_smoothing", 0.0) or 0.0)
            if eps:
                q = (1 - eps) * q + eps / classes
            # the loss of the best constant prediction (predict the prior) is its entropy
            baseline = torch.special.entr(q).sum()[None]
    if baseline is None:
        baseline = torch.full((1,), math.nan, device=x.device)
    lo, hi = torch.aminmax(xf)
    stats = torch.cat([torch.stack([lo, hi]), devs, baseline.to(xf.device)])
    return classes, stats


def _regression_stats(
    module: nn.Module, x: torch.Tensor, t: torch.Tensor, running: dict[str, Any]
) -> torch.Tensor | None:
    if t.shape != x.shape or t.dim() == 0 or t.shape[0] < 2 or not t.is_floating_point():
        return None
    xf, tf = x.float(), t.float()
    nan = torch.full((), math.nan, device=x.device)
    if module.reduction != "mean":
        return torch.stack([xf.min(), xf.max(), nan, nan, nan])
    if running.get("shape") != tf.shape[1:]:
        # shifted by the first batch's mean so float32 sums do not cancel
        running.update(shape=tf.shape[1:], shift=tf.mean(0), n=0, sum=0.0, sq=0.0)
    d = tf - running["shift"]
    running["n"] += tf.shape[0]
    running["sum"] = running["sum"] + d.sum(0)
    running["sq"] = running["sq"] + d.square().sum(0)
    mean = running["sum"] / running["n"]
    # predicting the mean target for every sample scores the target variance under MSE
    baseline = (running["sq"] / running["n"] - mean.square()).clamp_min(0).mean()
    return torch.stack([xf.min(), xf.max(), nan, nan, baseline])


class GradCarryProbe(Probe):
    name = "grad_carry"

    def __init__(self, state: WatchState):
        super().__init__(state)
        self.params: list[torch.Tensor] = []
        self._task: int | None = None
        self._step = -1
        self._carried: torch.Tensor | None = None
        # positions of self.params in the StepProbe's parameter list (found once)
        self._shared: tuple[list[torch.Tensor], list[int] | None] | None = None

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

    @guarded
    def _track(self) -> None:
        # `optimizer.zero_grad()` resets only its own parameters: look at those alone
        in_opt = {id(p) for group in self.state.optimizer.param_groups for p in group["params"]}
        self.params = [
            p
            for p in self.state.model.parameters()
            if p.requires_grad and not is_lazy(p) and id(p) in in_opt
        ]
        self.handles.extend(p.register_hook(self._on_grad) for p in self.params)

    @hook(in_compiled=True)
    def _on_grad(self, grad: torch.Tensor) -> None:
        """The first parameter hook of a step's first backward pass: nothing added yet."""
        state = self.state
        if not state.sampled or self._task is not None:
            return  # later hooks, and later (accumulating) backward passes of the step
        self._task, self._step = torch._C._current_graph_task_id(), state.step
        with torch.no_grad():
            self._carried = _total_norm(self.params, grad.device)

    @hook(in_compiled=True)
    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        carried = self._carried
        if carried is not None:
            with torch.no_grad():
                now = self._shared_norm(carried.device)
                if now is None:
                    now = _total_norm(self.params, carried.device)[0]
                stats = torch.stack([carried[0], now, carried[1]])
            self.state.deferred.add(self.state.tables["grad_carry"], [(self._step,)], stats[None])
        self._task, self._carried = None, None

    def _shared_norm(self, device: torch.device) -> torch.Tensor | None:
        """The norm of all `.grad`s from the norms StepProbe took at this step, if it did:
        the gradients are the same ones, and a norm of a large model costs a pass over
        all of them."""
        shared = self.state.grad_norms
        # StepProbe's post-step hook, which runs first, has already advanced state.step
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
            return torch.zeros((), device=device)
        if any(n.device != device for n in present):
            return None
        return torch.linalg.vector_norm(torch.stack(present))


def _total_norm(params: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """[norm of all `.grad`s together, share of parameters holding a non-zero one]."""
    grads = [dense_values(p.grad) for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(2, device=device)
    norms = float32_norms(grads)
    if any(n.device != device for n in norms):
        norms = [n.to(device) for n in norms]
    norms_t = torch.stack(norms)
    # the 2-norm of the norms is the norm of all together; the 0-norm counts non-zero ones
    share = torch.linalg.vector_norm(norms_t, 0) / len(params)
    return torch.stack([torch.linalg.vector_norm(norms_t), share])
