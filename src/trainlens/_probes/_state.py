"""The state a watched run shares between its probes: step counter, tables, sampling."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _records
from .._records import TABLES, Deferred, Table


class _ThreadFlags(threading.local):
    #: > 0 while trainlens itself runs the model in this thread (a probe's own forward):
    #: every probe of every active lens ignores those calls. Per thread: a block in
    #: another thread keeps recording meanwhile.
    suspended = 0


_LOCAL = _ThreadFlags()
# suspensions in any thread: hooks read this list item first (~20 ns) and ask the
# thread-local flag (~90 ns) only while some thread is suspended
_ANY_SUSPENDED = [0]
_SUSPEND_LOCK = threading.Lock()


def suspended_here() -> bool:
    """Whether trainlens runs the model itself in this thread right now."""
    return bool(_ANY_SUSPENDED[0] and _LOCAL.suspended)


class _SuspendedCount:
    """`_SUSPENDED[0]`: this thread's suspension count, for code written against the
    former process-wide list (new code uses the `_base.hook` guard)."""

    def __getitem__(self, index: int) -> int:
        return _LOCAL.suspended if _ANY_SUSPENDED[0] else 0


_SUSPENDED = _SuspendedCount()


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Run model code that probes must not record (trainlens's own extra passes)."""
    with _SUSPEND_LOCK:
        _ANY_SUSPENDED[0] += 1
    _LOCAL.suspended += 1
    try:
        yield
    finally:
        _LOCAL.suspended -= 1
        with _SUSPEND_LOCK:
            _ANY_SUSPENDED[0] -= 1


def is_suspended() -> bool:
    return suspended_here()


# True while torch.compile traces: hooks return at once, so dynamo folds them away and
# compiled graphs get no graph break, guard or recompilation from trainlens.
compiling = getattr(torch.compiler, "is_compiling", lambda: False)
#: inside a torch.func transform (`vmap`, `grad`, `jacrev`: per-sample gradients, MAML's
#: inner loop) the model runs on batched or functional wrappers: no record is taken there
#: (asked after `compiling()`, which dynamo must see first)
transformed = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)
# Every hook that dynamo may trace asks `compiling()` FIRST: reading trainlens's own
# changing state (the step, `sampled`) before it would make dynamo guard on that state
# and recompile the user's graph. The call costs well under a microsecond.


#: once sampling has thinned out (step 160 with the defaults), one step in this many gets
#: the costly statistics: a trend over thousands of steps needs no finer grain, and every
#: probe's statistics land on the same sampled step, so this knob is most of the
#: steady-state cost
DEFAULT_SAMPLE_EVERY = 20


#: a flush reads back the sampled statistics once this many sampled steps hold some (every
#: flush of a run's first steps; every 4th of the steady state's, one step in 20 sampled),
#: else the losses alone
FULL_FLUSH_SAMPLED = 10


@dataclass(frozen=True)
class Sampling:
    """Which steps get the expensive statistics.

    Every step of the first `dense_steps` is sampled (where a run goes wrong fastest,
    each step is seen), then the interval doubles each time the step count does (every
    2nd step up to 2 x `dense_steps`, every 4th up to 4 x, ...) until it reaches `every`:
    steps 0-9, 10, 12, ... 18, 20, 24, ... 36, 40, 48, ... 72, 80, 96, then one in 20 with
    the defaults. The trend of a short run keeps its shape at a quarter of the cost of
    sampling all of its first 100 steps.
    """

    every: int = DEFAULT_SAMPLE_EVERY
    dense_steps: int = 10
    flush_every: int = 50

    def __call__(self, step: int) -> bool:
        dense = self.dense_steps
        if step < dense:
            return True
        interval = self.every if dense <= 0 else min(self.every, 2 ** (step // dense).bit_length())
        return step % interval == 0


@dataclass
class Failure:
    """Where an exception was first seen while it unwound through hooked code."""

    exc_id: int
    phase: str
    module: str | None
    module_type: str | None
    inputs: list[list[int]]
    dtypes: list[str]
    path: list[str]
    call: int | None
    int_range: list[int] | None = None


class _Statistics(Deferred):
    """The run's deferred statistics; values on the `meta` device (a dry run) have no
    numbers to read back, so they are not kept."""

    def add(self, table: Table, prefixes: list[tuple[Any, ...]], values: torch.Tensor) -> None:
        if not values.is_meta:
            super().add(table, prefixes, values)

    def add_scalar(self, table: Table, prefix: tuple[Any, ...], value: torch.Tensor) -> None:
        if not value.is_meta:
            super().add_scalar(table, prefix, value)

    def add_row(self, table: Table, prefix: tuple[Any, ...], values: torch.Tensor) -> None:
        if not values.is_meta:
            super().add_row(table, prefix, values)


class WatchState:
    """Counters and tables of one watched run, shared by its probes."""

    def __init__(self, model: nn.Module, optimizer: Any, sampling: Sampling):
        self.model = model
        self.optimizer = optimizer
        self.sampling = sampling
        self.module_names: dict[int, str] = {id(m): n for n, m in model.named_modules()}
        self.tables = {
            name: Table(cols, _records.policy_for(name)) for name, cols in TABLES.items()
        }
        self.deferred: Deferred = _Statistics()
        self.deferred.eager(self.tables["losses"])
        # sampled steps whose statistics have not been read back yet (`end_step`)
        self.sampled_pending = 0
        self.t0 = time.perf_counter()
        self.step = 0
        self.sampled = sampling(0)
        # steps before this one are all sampled: set by the finiteness probe after it saw a
        # NaN/Inf loss between samples
        self.alarm_until = -1
        self.backward_passes = 0
        self.backward_in_step = 0
        # calls of the watched optimizer's `zero_grad()` so far (counted by StepProbe)
        self.zero_grads = 0
        # the watched model's mode at its last forward with grad enabled (None: none seen)
        self.forward_training: bool | None = None
        # whether the watched model's last forward ran with grad enabled (None: none seen):
        # a `loss.backward()` that raises for want of a graph after a forward under
        # `torch.no_grad()` was cut there
        self.forward_grad: bool | None = None
        # steps of other optimizers in the run's threads (counted by StepProbe)
        self.other_steps = 0
        self.phase = "other"  # "forward" | "backward" | "step" | "other"
        # (name, call index) of module forwards in flight, innermost last
        self.call_stack: list[tuple[str, int]] = []
        # modules with trainable parameters of their own that ran inside a call of the
        # model without being its submodules (layers kept in a plain list or dict, or made
        # in forward): described when first seen, the module itself weakly
        self.foreign_modules: list[dict[str, Any]] = []
        self.call_index = 0
        self.failure: Failure | None = None
        # set (by dynamo's replay of a constant store) when the model ran inside torch.compile
        self.compiled = False
        # the module the user passed to watch (a DDP or torch.compile wrapper of `model`)
        self.outer: nn.Module = model
        self.split_override: str | None = None
        # run-level facts probes add for the rules (merged into records.meta / run.json)
        self.extra_meta: dict[str, Any] = {}
        # `watch(checkpoint=...)` and the run dir, set by the Lens before probes install
        self.checkpoint: Any = None
        self.run_dir: Path | None = None
        # callables `(split, loss tensor)` told of every loss logged (handles remove them)
        self.loss_listeners: OrderedDict[int, Any] = OrderedDict()
        self._events_seen: set[tuple[str, str | None, str]] = set()
        # threads whose module calls belong to this run: the one that entered the block and
        # any that ran the watched model. Process-wide hooks (loss modules, SDPA) ignore
        # the others, so two blocks in two threads each record only their own run.
        self.threads: set[int] = {threading.get_ident()}
        # the run's shared per-forward dispatch (`_base.ForwardDispatch`), set by ProbeSet
        self.forwards: Any = None
        # the run's shared first-gradient-of-a-backward-pass dispatch (`_base.BackwardDispatch`)
        self.backwards: Any = None
        # id(output) -> (weakref, version, min, max) of the model's outputs this forward,
        # from the activation statistics, for the finiteness check (min + max is finite
        # exactly when the tensor is, and NaN / +Inf / -Inf like its sum)
        self.extrema: dict[int, tuple[Any, int, torch.Tensor, torch.Tensor]] = {}
        # (step, params, has_grad, norms): the gradient norms StepProbe took at this step's
        # `optimizer.step()`, for other probes that need the same norms (GradCarryProbe)
        self.grad_norms: tuple[int, list[Any], list[bool], list[Any]] | None = None
        # called first thing in `end_step`, every step: a probe's work at the step's end
        # without an optimizer hook of its own (each one is a guarded call per step); a
        # listener returns at once when it has nothing to do and never raises
        self.step_listeners: list[Any] = []
        # streaming the records to the run dir (set by the Lens): due at this step clock
        self.stream_due = float("inf")
        self.on_stream: Any = None

    def split(self) -> str:
        """SPEC: "train" when grad is enabled and the watched model is training, else "val".

        A framework integration that knows the loop it is in (Lightning's hooks) sets
        `split_override`.
        """
        if self.split_override is not None:
            return self.split_override
        return "train" if torch.is_grad_enabled() and self.model.training else "val"

    def end_step(self, lr: float) -> None:
        for listener in self.step_listeners:
            listener()
        now = time.perf_counter() - self.t0
        self.tables["steps"].append(self.step, now, lr, self.backward_in_step, self.sampled)
        if self.sampled:
            self.sampled_pending += 1
        self.step += 1
        self.backward_in_step = 0
        self.sampled = self.sampling(self.step) or self.step < self.alarm_until
        stream = now >= self.stream_due
        if self.step % self.sampling.flush_every == 0 or stream:
            if stream or self.sampled_pending >= FULL_FLUSH_SAMPLED:
                self.sampled_pending = 0
                self.deferred.flush()
            else:  # the losses only: see `Deferred.flush`
                self.deferred.flush(partial=True)
            if stream and self.on_stream is not None:
                self.on_stream(now)  # the run's records to disk, every few seconds

    def record_failure(
        self,
        exc: BaseException,
        phase: str,
        module: str,
        module_type: str,
        inputs: list[torch.Tensor],
        path: list[str],
        call: int | None = None,
        int_range: list[int] | None = None,
    ) -> None:
        """Where `exc` was first seen: the innermost hooked call sees it first; the calls it
        unwinds through afterwards keep that record."""
        if self.failure is not None and self.failure.exc_id == id(exc):
            return
        from ._tensors import dtype_names, shapes

        self.failure = Failure(
            exc_id=id(exc),
            phase=phase,
            module=module,
            module_type=module_type,
            inputs=shapes(inputs),
            dtypes=dtype_names(inputs),
            path=path,
            call=call,
            int_range=int_range,
        )

    def event(self, kind: str, module: str | None, message: str, **data: Any) -> None:
        """Record a one-off observation; the same (kind, module, message) only once."""
        key = (kind, module, message)
        if key in self._events_seen:
            return
        self._events_seen.add(key)
        self.tables["events"].append(
            self.step, kind, module, message, json.dumps(data, default=str)
        )

    def exception_in_flight(self) -> BaseException | None:
        return sys.exc_info()[1]


def _behind_guard(owner: Any, hook: Any) -> Any:
    if owner is None:
        return hook

    def guarded(*args: Any) -> None:
        if (_ANY_SUSPENDED[0] and _LOCAL.suspended) or owner.stopped or transformed():
            return
        try:
            hook(*args)
        except Exception as err:
            owner.stop(err, "forward hook")

    return guarded


def hook_modules(
    hooks: dict[nn.Module, Any],
    *,
    pre: bool = False,
    with_kwargs: bool = False,
    always_call: bool = False,
    on_compiling: Any = None,
    fallback: Any = None,
    owner: Any = None,
) -> Any:
    """One global module hook that calls `hooks[module]` for the modules it names.

    Per-module hooks are visible to `nn.TransformerEncoderLayer`, which then leaves its
    fused eval fast path and computes slightly different numbers; a global hook is not.
    While dynamo traces, the hook does nothing but `on_compiling(module)`: a lookup in it
    would split the user's graph. `fallback` (forward hooks without kwargs) gets the
    modules the table does not name, e.g. loss modules outside the model. With `owner`
    (a `Probe`), the hook runs behind the probe guard: not while suspended or once the
    probe stopped, and its failure stops the probe. Returns the handle to remove.
    """
    get = {id(m): _behind_guard(owner, h) for m, h in hooks.items()}.get
    glob = nn.modules.module
    if pre:

        def dispatch_pre(module: nn.Module, args: Any) -> None:
            if compiling():
                if on_compiling is not None:
                    on_compiling(module)
                return
            hook = get(id(module))
            if hook is not None:
                hook(module, args)

        return glob.register_module_forward_pre_hook(dispatch_pre)
    if with_kwargs:

        def dispatch_kw(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if compiling():
                return
            hook = get(id(module))
            if hook is not None:
                hook(module, args, kwargs, output)

        return glob.register_module_forward_hook(
            dispatch_kw, with_kwargs=True, always_call=always_call
        )

    def dispatch(module: nn.Module, args: Any, output: Any) -> None:
        if compiling():
            return
        hook = get(id(module))
        if hook is not None:
            hook(module, args, output)
        elif fallback is not None:
            fallback(module, args, output)

    return glob.register_module_forward_hook(dispatch, always_call=always_call)
