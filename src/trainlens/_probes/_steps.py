"""Steps, backward passes and per-parameter statistics.

A step is one `optimizer.step()` when an optimizer is watched, else one backward pass.
On sampled steps, gradient, parameter and update norms of every trainable parameter are
computed in bulk with `torch._foreach_norm` and read back later, never one by one.

Update norms compare each parameter before and after the step. Copying every parameter
would double parameter memory; instead a fixed sample of at most `UPDATE_SAMPLE`
elements per parameter is copied and its norm scaled to the full size: blocks of
`UPDATE_BLOCK` neighbours spread evenly over its storage (one cache line each: single
elements at a stride would touch a line apiece, 16x the memory traffic). That is exact
for small tensors and an unbiased-enough estimate for large ones, whose update/param
ratio is what the rules read. The sample is a view of the parameter's own storage in
whatever layout it has (`channels_last`, a transposed weight), never a copy of it.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from typing import Any

import torch
from torch.nn.parameter import is_lazy
from torch.optim.optimizer import register_optimizer_step_post_hook

from ._base import Probe, guarded, hook
from ._state import WatchState
from ._tensors import dense_values, float32_norms

UPDATE_SAMPLE = 4096
#: neighbouring elements per block of the update sample (64 bytes of float32)
UPDATE_BLOCK = 16
#: skipped steps recorded one by one in the events table; past it only counted
MAX_SKIP_EVENTS = 100
#: kinds of other optimizers described in `loop_order["other_optimizers"]`
MAX_OTHER_OPTIMIZERS = 8
#: sampled steps (the first ones with an update) whose update direction is measured: a
#: step that climbs the loss (`p += lr * p.grad`) does so from the first step
DIRECTION_STEPS = 5
#: ... on models of at most this many parameter tensors (a Python call per tensor)
MAX_DIRECTION_PARAMS = 2048


def _flat_view(t: torch.Tensor) -> torch.Tensor | None:
    """All of `t`'s elements as a 1-d view of its storage (in storage order), or None where
    its strides allow none. `reshape(-1)` would copy a non-contiguous tensor, and an
    update measured on a copy is always 0."""
    if t.is_contiguous():
        return t.view(-1)
    order = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.size(d)), reverse=True)
    dense = t.permute(order)
    return dense.view(-1) if dense.is_contiguous() else None


def _sample_view(p: torch.Tensor) -> torch.Tensor:
    """What the update of `p` is measured on: itself when small (or strided beyond a flat
    view), else about `UPDATE_SAMPLE` elements in blocks of `UPDATE_BLOCK` neighbours."""
    whole = p.detach()
    flat = _flat_view(whole)
    if flat is None or flat.numel() <= UPDATE_SAMPLE:
        return whole
    blocks = flat.numel() // UPDATE_BLOCK
    step = max(1, blocks // (UPDATE_SAMPLE // UPDATE_BLOCK))
    return flat[: blocks * UPDATE_BLOCK].view(blocks, UPDATE_BLOCK)[::step]


class StepProbe(Probe):
    name = "steps"
    writes = ("steps", "params")

    def __init__(self, state: WatchState):
        super().__init__(state)
        self.names: list[str] = []
        self.params: list[torch.Tensor] = []
        self.prefix_modules: list[str] = []
        self._scales: list[float] = []
        self._scaled = False
        self._scale_t: torch.Tensor | None = None
        self._view_cache: list[Any] | None = None
        self._views: list[torch.Tensor] | None = None
        self._detached: list[torch.Tensor] = []
        self._before: list[torch.Tensor] | None = None
        self._grad_norms: list[torch.Tensor] | None = None
        self._has_grad: list[bool] = []
        # (step, cosine between the update and the gradient) of the first sampled steps
        self._directions: list[tuple[int, torch.Tensor]] = []
        self._in_step = False
        # backward_passes when `zero_grad()` last ran after a backward pass of the step
        self._zeroed_after: int | None = None
        self._zeroed_to_none = True
        # `state.other_steps` at the last backward pass
        self._other_at_pass = 0
        # optimizer -> its entry in loop_order["other_optimizers"] (weakly: one rebuilt
        # every step must not be kept alive)
        self._others: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
        # backward passes by the model's mode (run.json `backward_modes`)
        self._modes: dict[str, Any] = {
            "train": 0, "eval": 0, "first_eval_step": None, "train_before": None
        }  # fmt: skip
        state.extra_meta["backward_modes"] = self._modes

    def install(self) -> None:
        self.state.backwards.first_grad(self, self._on_grad)
        opt = self.state.optimizer
        if opt is not None:
            self.handles.append(opt.register_step_pre_hook(self._pre_step))
            self.handles.append(opt.register_step_post_hook(self._post_step))
            self._watch_loop_order(opt)
        if any(is_lazy(p) for p in self.state.model.parameters()):
            # lazy layers get their parameters in the first forward: track them after it
            def after_first_forward(module: Any, args: Any, output: Any) -> None:
                once.remove()
                self._track_params()

            once = self.state.model.register_forward_hook(after_first_forward)
            self.handles.append(once)
        else:
            self._track_params()

    @guarded
    def _track_params(self) -> None:
        named = [
            (n, p)
            for n, p in self.state.model.named_parameters()
            if p.requires_grad and not is_lazy(p)
        ]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.prefix_modules = [n.rpartition(".")[0] for n in self.names]
        self._scales = [math.sqrt(p.numel() / max(1, _sample_view(p).numel())) for p in self.params]
        self._scaled = any(s != 1.0 for s in self._scales)
        self._scale_t = None
        self._view_cache = None

    # --- backward ----------------------------------------------------------------------
    def _on_grad(self, grad: torch.Tensor) -> None:
        """The first parameter gradient of each backward pass (the shared dispatch)."""
        state = self.state
        if (
            state.backward_in_step
            and state.optimizer is not None
            and not self._in_step  # step(closure) may reset and recompute grads (LBFGS)
            and self._grads_reset()
        ):
            if state.other_steps != self._other_at_pass:
                # another optimizer stepped since that pass: it was that optimizer's (a
                # GAN's generator loss runs backward through the discriminator)
                state.backward_in_step = 0
            else:
                self._skipped_step()
        self._other_at_pass = state.other_steps
        # the mode the model made this pass's loss in: a backward pass of an eval-mode
        # forward is training with dropout off and batch norm frozen (`model.train()`
        # missing after a validation's `model.eval()`), and its loss is filed under "val"
        modes = self._modes
        training = state.forward_training
        if training if training is not None else state.model.training:
            modes["train"] += 1
        else:
            modes["eval"] += 1
            if modes["first_eval_step"] is None:
                modes["first_eval_step"] = state.step
                modes["train_before"] = modes["train"]
        state.backward_passes += 1
        state.backward_in_step += 1
        if self._in_step:
            # a pass the optimizer ran itself (`step(closure)`: LBFGS evaluates several):
            # not the loop accumulating gradients (run.json `in_step_backward_passes`)
            meta = state.extra_meta
            meta["in_step_backward_passes"] = meta.get("in_step_backward_passes", 0) + 1
        state.phase = "backward"
        if state.optimizer is None:
            # without an optimizer the end of a backward pass ends the step. With one, the
            # phase stays "backward" until the step: an exception raised after the pass
            # is told apart at the block's exit by its traceback (`_watch`), not by a
            # callback from the engine on every step
            torch.autograd.Variable._execution_engine.queue_callback(self._on_backward_end)

    @guarded
    def _on_backward_end(self) -> None:
        state = self.state
        state.phase = "other"
        if state.optimizer is not None:
            return
        # without an optimizer a step is a backward pass; the update is whatever the
        # user's own code did to the parameters since the previous backward pass
        if state.sampled:
            self._snapshot_grads()
            self._record(update=self._before is not None)
        if state.sampling(state.step + 1):
            self._snapshot_params()  # the next step's update is measured from here
        else:
            self._before = None
        state.end_step(lr=math.nan)

    def _grads_reset(self) -> bool:
        """No gradient left from the backward passes since the last step: they were reset.

        Checked only when a backward pass follows another without an optimizer step in
        between, i.e. accumulation (gradients still there) or a skipped step.
        """
        return all(p.grad is None for p in self.params)

    def _skipped_step(self) -> None:
        """The last iteration's `optimizer.step()` never ran, and its gradients were reset.

        That is a step `torch.amp.GradScaler` skipped because the scaled gradients had
        inf/NaN (normal while the scale settles), or a missing `optimizer.step()`. Not a
        step (SPEC: a step is an `optimizer.step()`), and not accumulation either: its
        backward pass is not counted into the next step's `backward_passes`.
        """
        state = self.state
        skipped = state.extra_meta.get("skipped_steps", 0) + 1
        state.extra_meta["skipped_steps"] = skipped
        if skipped <= MAX_SKIP_EVENTS:
            state.event(
                "step_skipped",
                None,
                f"no optimizer.step() after backward pass {state.backward_passes} (before step "
                f"{state.step}) and the gradients were reset: a step GradScaler skipped for "
                "inf/NaN gradients, or a missing optimizer.step()",
                backward_pass=state.backward_passes,
            )
        state.backward_in_step = 0

    # --- optimizer step ----------------------------------------------------------------
    @hook(in_compiled=True)
    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> Any:
        if self._zeroed_after is not None:
            self._cleared_before_step()
        self.state.phase = "step"
        self._in_step = True
        if self.state.sampled:
            self._snapshot_grads()
            self._snapshot_params()
            # args[0] is the optimizer itself
            closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
            if callable(closure):
                return self._after_closure(closure, args, kwargs)
        return None

    def _after_closure(self, closure: Any, args: Any, kwargs: Any) -> Any:
        """`step(closure)` (Lightning, LBFGS) runs forward and backward inside the step:
        the gradients to record are the ones the closure leaves, not those before it."""

        def closure_then_snapshot(*a: Any, **k: Any) -> Any:
            out = closure(*a, **k)
            if self.state.sampled:
                self._snapshot_grads()
            return out

        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then_snapshot}
        return (args[0], closure_then_snapshot, *args[2:]), kwargs

    @hook(in_compiled=True)
    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        state = self.state
        self._in_step = False
        if state.sampled and self._before is not None:
            self._record(update=True)
        self._before = None
        state.phase = "other"
        lr = optimizer.param_groups[0].get("lr", math.nan)
        state.end_step(lr=lr if isinstance(lr, (int, float)) else math.nan)

    # --- the order of the loop -----------------------------------------------------------
    def _watch_loop_order(self, opt: Any) -> None:
        """What the loop does around the step: the lr it started from, schedulers stepped on
        the watched optimizer, and `zero_grad()` between `backward()` and `step()`.

        Cheap: a counter per call; the lr of every step is in the steps table already.
        """
        group = opt.param_groups[0] if opt.param_groups else {}
        defaults = getattr(opt, "defaults", {}) or {}
        self.state.extra_meta["loop_order"] = {
            "optimizer_lr": _float_or_none(defaults.get("lr")),
            "initial_lr": _float_or_none(group.get("initial_lr")),
            "lr_at_start": _float_or_none(group.get("lr")),
            "cleared_before_step": 0,
            "schedulers": {},
        }
        self.handles.append(_patch_zero_grad(opt, self._on_zero_grad))
        self.handles.append(_patch_scheduler_step(opt, self._on_scheduler_step))
        self.state.extra_meta["loop_order"]["other_optimizers"] = []
        self.handles.append(register_optimizer_step_post_hook(self._on_any_step))

    @hook(in_compiled=True)
    def _on_zero_grad(self, set_to_none: Any) -> None:
        state = self.state
        state.zero_grads += 1
        if self._in_step or not state.backward_in_step:
            return  # before backward (or after the step): the usual places
        self._zeroed_after = state.backward_passes
        self._zeroed_to_none = set_to_none is not False

    def _cleared_before_step(self) -> None:
        """`zero_grad()` ran after this step's backward pass and no backward pass since: the
        step gets no gradient (a backward after it means accumulation or a skipped step)."""
        state = self.state
        zeroed, self._zeroed_after = self._zeroed_after, None
        if zeroed != state.backward_passes:
            return
        info = state.extra_meta.get("loop_order")
        if info is None:
            return
        info["cleared_before_step"] += 1
        if info["cleared_before_step"] == 1:
            info["first_cleared_step"] = state.step
            info["order"] = "forward, backward(), zero_grad({}), step()".format(
                "set_to_none=True" if self._zeroed_to_none else "set_to_none=False"
            )

    @hook(in_compiled=True)
    def _on_any_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Every optimizer's step (a process-wide hook): another optimizer of this run's
        threads is counted, with what it steps (a GAN's other half, an actor-critic's
        critic, or this model's own parameters); the watched optimizer returns at once.

        Optimizers alike (class and parameters) share one entry, `instances` of them: a
        loop that builds a new optimizer every step adds one entry, not one per step."""
        state = self.state
        if optimizer is state.optimizer or threading.get_ident() not in state.threads:
            return
        state.other_steps += 1
        try:
            entry = self._others.get(optimizer)
        except TypeError:  # an optimizer class without weak references: not described
            return
        if entry is None:
            # past the kinds described: an empty entry, so it is not looked at again
            entry = self._other_entry(optimizer) or {"steps": 0}
            self._others[optimizer] = entry
        entry["steps"] += 1

    def _other_entry(self, optimizer: Any) -> dict[str, Any] | None:
        state = self.state
        watched = {id(p) for g in state.optimizer.param_groups for p in g["params"]}
        mine = {id(p) for p in state.model.parameters()}
        params = [p for g in optimizer.param_groups for p in g["params"]]
        outside = [p for p in params if id(p) not in watched]
        kind = {
            "optimizer": type(optimizer).__name__,
            "params": len(params),
            "params_outside": len(outside),
            "in_model": sum(id(p) in mine for p in outside),
        }
        known = state.extra_meta["loop_order"]["other_optimizers"]
        entry = next((e for e in known if all(e[k] == v for k, v in kind.items())), None)
        if entry is None:
            if len(known) >= MAX_OTHER_OPTIMIZERS:
                return None  # counted in `state.other_steps` only
            entry = {**kind, "instances": 0, "steps": 0, "first_step": state.step}
            known.append(entry)
        entry["instances"] += 1
        return entry

    @hook(in_compiled=True)
    def _on_scheduler_step(self, scheduler: Any) -> None:
        info = self.state.extra_meta.get("loop_order")
        if info is None:
            return
        name = type(scheduler).__name__
        entry = info["schedulers"].setdefault(name, {"calls": 0, "first_step": self.state.step})
        entry["calls"] += 1
        entry["last_step"] = self.state.step

    # --- statistics --------------------------------------------------------------------
    @guarded
    def _snapshot_grads(self) -> None:
        grads = [p.grad for p in self.params]
        self._has_grad = [g is not None for g in grads]
        present = [dense_values(g) for g in grads if g is not None]
        norms = float32_norms(present)
        it = iter(norms)
        nan = None
        full = []
        for has, p in zip(self._has_grad, self.params, strict=True):
            if has:
                full.append(next(it))
            else:
                if nan is None or nan.device != p.device:
                    nan = torch.full((), math.nan, device=p.device)
                full.append(nan)
        self._grad_norms = full
        self.state.grad_norms = (self.state.step, self.params, self._has_grad, full)

    def _snapshot_params(self) -> None:
        self._refresh_views()
        views = self._views
        # one kernel for all the copies (a clone per parameter is a Python call each); the
        # views are detached: no `no_grad()` context (~9 Python calls)
        self._before = list(torch._foreach_mul(views, 1.0)) if views else []

    def _refresh_views(self) -> None:
        """Detached views of the parameters (`self._detached`) and what the update is
        measured on (`self._views`): a small parameter itself, a strided sample of a large
        one. Cached while each parameter keeps its storage and shape."""
        cache = self._view_cache
        if cache is None or len(cache) != len(self.params):
            cache = self._view_cache = [None] * len(self.params)
        for i, p in enumerate(self.params):
            hit = cache[i]
            key = (p.data_ptr(), p.shape, p.stride())
            if hit is None or hit[0] != key:
                whole = p.detach()
                cache[i] = (key, whole, _sample_view(p))
        self._detached = [c[1] for c in cache]  # type: ignore[index]
        self._views = [c[2] for c in cache]  # type: ignore[index]

    def _record(self, update: bool) -> None:
        """One row per parameter: gradient, parameter and update norm, from one norm call
        and one stack for the step (the update norms scaled to the full parameter)."""
        if not self.params or self._grad_norms is None:
            return
        state = self.state
        n = len(self.params)
        # detached tensors throughout: no `no_grad()` context
        if update:
            torch._foreach_sub_(self._before, self._views)  # before - now: same norm
            norms = float32_norms([*self._detached, *self._before])
            if len(self._directions) < DIRECTION_STEPS and n <= MAX_DIRECTION_PARAMS:
                self._direction(self._before)
        else:
            self._refresh_views()
            norms = float32_norms(self._detached)
            norms += [torch.full_like(norms[0], math.nan)] * n
        scalars = [*self._grad_norms, *norms]
        device = norms[0].device
        if len({t.device for t in scalars}) > 1:  # a model split over devices
            scalars = [t.to(device) for t in scalars]
        # one stack for the step: [3n] -> [n, 3] (grad, param, update per parameter)
        values = torch.stack(scalars).view(3, n)
        if update and self._scaled:
            values[2].mul_(self._scale_tensor(device))
        values = values.t()
        step = state.step
        prefixes = [
            (step, n, m, h)
            for n, m, h in zip(self.names, self.prefix_modules, self._has_grad, strict=True)
        ]
        state.deferred.add(state.tables["params"], prefixes, values)
        self._grad_norms = None

    def _direction(self, back: list[torch.Tensor]) -> None:
        """What the cosine between this step's update (`now - before`, on the measured
        views) and the gradient is made of: negative for a step down the loss (SGD: -1),
        positive for one up it. The gradient is the one the optimizer stepped on, or (no
        optimizer: the step is the user's own code between backward passes) the next
        pass's, which a small step leaves pointing the same way. Kept on the device as one
        vector per step (the per-tensor dot products and norms), summed up at the end."""
        try:
            ds, gs = [], []
            for p, d in zip(self.params, back, strict=True):
                g = p.grad
                if g is None or g.layout != torch.strided or g.is_complex():
                    continue
                gv = g.detach() if d.shape == p.shape else _sample_view(g)
                if gv.shape == d.shape and gv.device == d.device:
                    ds.append(d)
                    gs.append(gv)
            if not ds:
                return
            dots = [t.sum(dtype=torch.float32) for t in torch._foreach_mul(ds, gs)]
            self._directions.append(
                (self.state.step, torch.stack([*dots, *float32_norms(ds + gs)]))
            )
        except Exception:  # a dtype or device mix this cannot pair: no direction, no harm
            return

    def finish(self, exc: BaseException | None) -> None:
        found = []
        for step, parts in self._directions:
            try:
                values = parts.to(torch.float64).cpu().tolist()
            except Exception:  # a value that cannot be read (a device that failed)
                continue
            n = len(values) // 3
            dot = sum(values[:n])
            nd = math.sqrt(sum(v * v for v in values[n : 2 * n]))
            ng = math.sqrt(sum(v * v for v in values[2 * n :]))
            # `back` was before - now: the update is its negation
            cosine = -dot / (nd * ng) if nd > 0 and ng > 0 else math.nan
            found.append({"step": step, "cosine": cosine if math.isfinite(cosine) else None})
        if found:
            self.state.extra_meta["update_direction"] = found

    def _scale_tensor(self, device: torch.device) -> torch.Tensor:
        cached = self._scale_t
        if cached is None or cached.device != device:
            cached = self._scale_t = torch.tensor(self._scales, device=device)
        return cached


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class _Restore:
    """A patch's removal, with the `remove()` of a `RemovableHandle`."""

    def __init__(self, undo: Any):
        self._undo = undo

    def remove(self) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()


def _patch_zero_grad(opt: Any, seen: Any) -> _Restore:
    """Wrap this optimizer's `zero_grad` (an instance attribute, for the block only)."""
    had = "zero_grad" in vars(opt)
    before = vars(opt).get("zero_grad")
    original = opt.zero_grad

    def zero_grad(*args: Any, **kwargs: Any) -> Any:
        # try/except, not contextlib.suppress: this runs on every step, and a context
        # manager costs an object and two calls
        try:  # noqa: SIM105
            seen(kwargs.get("set_to_none", args[0] if args else True))
        except Exception:  # recording never breaks the user's loop
            pass
        return original(*args, **kwargs)

    opt.zero_grad = zero_grad

    def undo() -> None:
        if vars(opt).get("zero_grad") is zero_grad:
            if had:
                opt.zero_grad = before
            else:
                del opt.zero_grad

    return _Restore(undo)


def _patch_scheduler_step(opt: Any, seen: Any) -> _Restore:
    """Count `step()` calls of the lr schedulers of `opt` (patched on the base class for the
    block; a scheduler keeps no reference the optimizer could give us)."""
    from torch.optim import lr_scheduler

    base = getattr(lr_scheduler, "LRScheduler", None)
    if base is None or "step" not in vars(base):
        return _Restore(None)
    original = vars(base)["step"]
    active = [True]

    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if active[0] and getattr(self, "optimizer", None) is opt:
            with contextlib.suppress(Exception):
                seen(self)
        return original(self, *args, **kwargs)

    base.step = step

    def undo() -> None:
        active[0] = False
        if vars(base).get("step") is step:
            base.step = original

    return _Restore(undo)
