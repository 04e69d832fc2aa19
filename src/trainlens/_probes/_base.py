"""The probe contract: what every probe is, and the one place its hooks are guarded.

A probe is built from the run's `WatchState` and has three moments:

- `install()` registers its hooks. Every handle it gets (a torch `RemovableHandle`, or
  anything with `remove()`: a patch, a filter, a forward subscription) goes into
  `probe.handles`, also the ones it adds later (once lazy parameters exist).
- `retire()` removes its hooks early, when it has seen all it needs (left in place under
  torch.compile: changing hooks would make dynamo recompile the user's model).
- `finish(exc)` runs after every hook of the run is gone, for what only the end of the
  run knows (exc is the block's exception or None); run-level facts go into
  `state.extra_meta`, which becomes part of `records.meta`.

trainlens never breaks the user's program. Every hook runs behind one guard: the
decorator `hook` (or `ForwardDispatch`, for the per-module forward hooks it shares
between probes) returns at once while torch.compile traces (`compiling()` is asked
first, so dynamo folds the hook away) or while trainlens runs the model itself
(`suspended()`), and turns an exception of the probe's own code into `probe.stop(err)`:
the probe is off for the rest of the run, the drill says which probe stopped, at which
step and why, and the user's loop goes on as without it. The user's own exceptions never
pass through a guard: hooks call no user code.

`ProbeSet` is what `watch` holds: it installs the probes, owns all their handles in one
`contextlib.ExitStack` (so `close()` removes every hook and patch whatever fails) and
finishes them one by one, each failure confined to its probe.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn
from torch.nn.modules.loss import _Loss
from torch.nn.parameter import is_lazy

from ._calls import call_signature
from ._state import _ANY_SUSPENDED, _LOCAL, WatchState, compiling, transformed

F = TypeVar("F", bound=Callable[..., Any])

#: frames a hooked module call adds over a plain one (torch's `inner()` closure), per
#: level of nesting, plus room for the hooks themselves at the deepest level
_FRAMES_PER_LEVEL = 1
_HOOK_FRAMES = 64


class Probe:
    """Base of every probe: its state, its handles, and whether it is still on."""

    #: the name the drill uses when this probe stops ("probe steps stopped at step 3: ...")
    name: ClassVar[str] = "probe"
    #: a first-batch check: it looks once a run, then `retire()`s itself
    once: ClassVar[bool] = False
    #: the record tables it writes: if it stops, findings that read them are qualified
    writes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, state: WatchState):
        self.state = state
        self.handles: list[Any] = []
        self.stopped = False

    def install(self) -> None:
        """Register hooks; keep every handle in `self.handles`."""

    def finish(self, exc: BaseException | None) -> None:
        """After all hooks are gone: what only the end of the run knows."""

    def retire(self) -> None:
        """Done for this run: the hooks go, so later steps do not pay for them."""
        if self.state.compiled:
            return  # changing the hooks would make dynamo guard, recompile the model
        remove_all(self.handles)

    def stop(self, err: BaseException, where: str = "") -> None:
        """Switch the probe off after a failure of its own code, and say so in the drill."""
        stop(self, err, where)

    def guard(self, fn: Callable[..., Any], *, in_compiled: bool = False) -> Callable[..., Any]:
        """`fn` (a closure registered as a hook) behind this probe's guard, as `hook` does."""
        probe = self

        def guarded_closure(*args: Any) -> Any:
            if (not in_compiled and (compiling() or transformed())) or (
                _ANY_SUSPENDED[0] and _LOCAL.suspended
            ):
                return None
            if probe.stopped:
                return None
            try:
                return fn(*args)
            except Exception as err:
                probe.stop(err, getattr(fn, "__name__", "hook"))
                return None

        return guarded_closure


def stop(probe: Any, err: BaseException, where: str = "") -> None:
    """`Probe.stop` for any probe object (also one written before the base class)."""
    if getattr(probe, "stopped", False):
        return
    probe.stopped = True
    state = probe.state
    name = getattr(probe, "name", None) or type(probe).__name__
    detail = f"{type(err).__name__}: {str(err)[:300]}"
    record = {"probe": name, "step": state.step, "where": where, "error": detail}
    tables = list(getattr(probe, "writes", ()))
    state.extra_meta.setdefault("probes_stopped", []).append({**record, "tables": tables})
    with contextlib.suppress(Exception):
        state.event(
            "probe_stopped", None, f"probe {name} stopped at step {state.step}: {detail}", **record
        )


def hook(fn: F | None = None, *, in_compiled: bool = False) -> Any:
    """The one guard of a probe's hook method (the probe is its first argument).

    Returns None at once while torch.compile traces (asked first, so dynamo folds the
    hook away), while trainlens runs the model in this thread, or once the probe has
    stopped; an exception of the hook stops the probe. `in_compiled=True` for optimizer
    and autograd hooks, which run as before when the user compiles the step: they count
    the steps, and dynamo traces them as it did.
    """

    def wrap(fn: F) -> F:
        if in_compiled:

            @functools.wraps(fn)
            def guarded_hook(probe: Probe, *args: Any, **kwargs: Any) -> Any:
                if (_ANY_SUSPENDED[0] and _LOCAL.suspended) or probe.stopped:
                    return None
                try:
                    return fn(probe, *args, **kwargs)
                except Exception as err:
                    probe.stop(err, fn.__name__)
                    return None

        else:

            @functools.wraps(fn)
            def guarded_hook(probe: Probe, *args: Any, **kwargs: Any) -> Any:
                if (
                    compiling()
                    or transformed()
                    or (_ANY_SUSPENDED[0] and _LOCAL.suspended)
                    or probe.stopped
                ):
                    return None
                try:
                    return fn(probe, *args, **kwargs)
                except Exception as err:
                    probe.stop(err, fn.__name__)
                    return None

        return guarded_hook  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap


def guarded(fn: F) -> F:
    """Like `hook`, for probe code that is not a hook (what an API call or `finish` runs):
    no compile or suspension check, only the failure confined to the probe."""

    @functools.wraps(fn)
    def safe(probe: Probe, *args: Any, **kwargs: Any) -> Any:
        if probe.stopped:
            return None
        try:
            return fn(probe, *args, **kwargs)
        except Exception as err:
            probe.stop(err, fn.__name__)
            return None

    return safe  # type: ignore[return-value]


def remove_all(handles: list[Any]) -> None:
    """Remove handles newest first; every one is tried, the first error is raised after."""
    first: BaseException | None = None
    while handles:
        handle = handles.pop()
        try:
            handle.remove()
        except Exception as err:  # pragma: no cover - torch handles do not raise
            first = first or err
    if first is not None:
        raise first


# --- shared per-forward dispatch --------------------------------------------------------
Post = Callable[[nn.Module, tuple[Any, ...], Any], None]
Pre = Callable[[nn.Module, tuple[Any, ...]], None]


#: loss modules given a hook of their own; a run that makes more is never quiet
MAX_LOSS_MODULES = 16
#: call signatures kept (a batch length that varies every step makes a new one each time:
#: such calls are dispatched in full, and the set stays bounded)
MAX_FAMILIAR = 1024
#: modules not the model's, seen running inside its forward, that are looked at
MAX_FOREIGN = 256
#: ... and described (those with trainable parameters of their own)
MAX_FOREIGN_DESCRIBED = 16
#: models whose forward reads their own hooks (the fused fast path), or has no modules
#: inside to be quiet about
_NEVER_QUIET = (nn.TransformerEncoderLayer, nn.TransformerEncoder, nn.Transformer)


def _may_be_quiet(model: nn.Module) -> bool:
    return next(model.children(), None) is not None and not isinstance(model, _NEVER_QUIET)


class _Subscription:
    def __init__(self, dispatch: ForwardDispatch, kind: str, key: int | None, item: Any):
        self._args = (kind, key, item)
        self._dispatch = dispatch

    def remove(self) -> None:
        self._dispatch._unsubscribe(*self._args)


class ForwardDispatch:
    """One global forward pre-hook and one post-hook for all the probes of a run.

    Global hooks rather than per-module ones: `nn.TransformerEncoderLayer` leaves its
    fused eval fast path when it has hooks of its own, and computes slightly different
    numbers. Several probes need the same facts of every forward (is it one of the
    model's modules, is it a loss module, does it fail): they are found once here, and
    only the interested probes are called, each behind the guard. Loss modules are
    process-wide (`loss_fn = nn.CrossEntropyLoss()` lives outside the model): only those
    called in the run's threads (`state.threads`) count.

    Quiet calls: a global hook makes every module call of the process run through Python
    twice, most of an unsampled step's cost on a model of many small modules. The model
    itself is dispatched by hooks of its own, and a call of it on an unsampled step whose
    `call_signature` was seen before, every module hooked, goes through the same shapes
    again: the global hooks are taken off for it (and for what follows until the next
    call of the model), and the loss modules seen so far report through hooks of their
    own. A failure inside such a call is placed from the traceback (`module_calls`).
    Sampled steps, a call with new shapes or modes, and the first calls of a run are
    dispatched in full. Never quiet: a compiled model (changing hooks recompiles it), a
    leaf or transformer-layer model (nothing to save, or its fast path reads its hooks),
    a run whose model's modules are called outside a call of the model, or whose loss
    modules are made anew (one of them died, or more than `MAX_LOSS_MODULES`).
    """

    def __init__(self, state: WatchState):
        self.state = state
        # subscriptions by module id (all of them), and those that act on every step: an
        # unsampled step walks the second, not every subscription to skip most of them
        self._pre: dict[int, list[tuple[Probe, Pre, bool]]] = {}
        self._post: dict[int, list[tuple[Probe, Post, bool, bool]]] = {}
        self._loss: list[tuple[Probe, Post, bool, bool]] = []
        self._pre_every: dict[int, list[tuple[Probe, Pre, bool]]] = {}
        self._post_every: dict[int, list[tuple[Probe, Post, bool, bool]]] = {}
        self._loss_every: list[tuple[Probe, Post, bool, bool]] = []
        self._handles: list[Any] = []
        self._root: nn.Module = state.model
        # the model, once its own hooks dispatch it (not a ScriptModule: no hooks there)
        self._own_root: nn.Module | None = None
        self._global: list[Any] = []  # the global hooks' handles, while they are on
        self.quiet = False  # the global hooks are off
        self._quiet_ok = _may_be_quiet(state.model)
        self._familiar: set[Any] = set()  # call signatures dispatched in full
        self._keys: list[Any] = []  # per call of the model in progress: its key to learn
        self._depth = 0  # calls of the model in progress
        self._thread = threading.get_ident()  # the one thread whose calls may be quiet
        # id(loss module) -> (weak reference, handle of its own post hook)
        self._losses: dict[int, tuple[Any, Any]] = {}
        self._foreign_seen: set[int] = set()  # ids of modules not the model's seen inside it

    def pre(self, probe: Probe, hooks: dict[nn.Module, Pre], *, sampled: bool = False) -> None:
        """`hooks[module](module, args)` before the forward of each module named; with
        `sampled`, on sampled steps only (asked once here, not in every hook)."""
        self._ensure()
        for module, fn in hooks.items():
            item = (probe, fn, sampled)
            self._pre[id(module)] = [*self._pre.get(id(module), ()), item]
            if not sampled:
                self._pre_every[id(module)] = [*self._pre_every.get(id(module), ()), item]
            probe.handles.append(_Subscription(self, "pre", id(module), item))

    def post(
        self,
        probe: Probe,
        hooks: dict[nn.Module, Post],
        *,
        always: bool = False,
        sampled: bool = False,
    ) -> None:
        """`hooks[module](module, args, output)` after each module named. With `always`,
        also when the forward raised (output None, the exception in `sys.exc_info()`);
        with `sampled`, on sampled steps only."""
        self._ensure()
        for module, fn in hooks.items():
            item = (probe, fn, always, sampled)
            self._post[id(module)] = [*self._post.get(id(module), ()), item]
            if not sampled:
                self._post_every[id(module)] = [*self._post_every.get(id(module), ()), item]
            probe.handles.append(_Subscription(self, "post", id(module), item))

    def loss(self, probe: Probe, fn: Post, *, always: bool = False, sampled: bool = False) -> None:
        """`fn(module, args, output)` after every `torch.nn` loss module of the run (with
        `sampled`, on sampled steps only)."""
        self._ensure()
        item = (probe, fn, always, sampled)
        self._loss = [*self._loss, item]
        if not sampled:
            self._loss_every = [*self._loss_every, item]
        probe.handles.append(_Subscription(self, "loss", None, item))

    def _unsubscribe(self, kind: str, key: int | None, item: Any) -> None:
        # copy on write: a dispatch in progress keeps iterating the list it started with
        if kind == "loss":
            self._loss = [x for x in self._loss if x is not item]
            self._loss_every = [x for x in self._loss_every if x is not item]
            return
        tables: tuple[dict[int, Any], ...] = (
            (self._pre, self._pre_every) if kind == "pre" else (self._post, self._post_every)
        )
        for table in tables:
            subs = [x for x in table.get(key, ()) if x is not item]  # type: ignore[arg-type]
            if subs:
                table[key] = subs  # type: ignore[index]
            else:
                table.pop(key, None)  # type: ignore[arg-type]

    def remove(self) -> None:
        try:
            remove_all(self._global)
        finally:
            remove_all(self._handles)

    def _ensure(self) -> None:
        if self._handles:
            return
        root = self._root
        self._handles.append(_Removal(lambda: self._losses.clear()))
        self._attach()
        if not self._quiet_ok:
            # nothing to be quiet about (a leaf), or a model whose fused fast path reads
            # its own hooks: the global hooks dispatch it, as every other module
            return
        try:
            pre = root.register_forward_pre_hook(self._root_pre, with_kwargs=True)
        except RuntimeError:  # a ScriptModule takes no hooks: the global ones see it
            self._quiet_ok = False
            return
        self._handles.append(pre)
        self._handles.append(root.register_forward_hook(self._root_post, always_call=True))
        self._own_root = root

    def _attach(self) -> None:
        glob = nn.modules.module
        self._global.append(glob.register_module_forward_pre_hook(self._dispatch_pre))
        self._global.append(
            glob.register_module_forward_hook(self._dispatch_post, always_call=True)
        )
        self.quiet = False

    def _detach(self) -> None:
        remove_all(self._global)
        self.quiet = True

    # --- the model's own calls ---------------------------------------------------------
    def _root_pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if compiling():
            self.state.compiled = True  # inside compiled code: only note that it ran
            return
        if transformed() or (_ANY_SUSPENDED[0] and _LOCAL.suspended):
            return
        state = self.state
        key = None
        if threading.get_ident() != self._thread and self._quiet_ok:
            # the model runs in several threads, maybe inside a quiet call of another one:
            # every call is dispatched in full from now on
            self._quiet_ok = False
            if self.quiet:
                with contextlib.suppress(Exception):  # a hook of the user's: never raise
                    self._attach()
        if not self._depth:
            quiet = False
            try:
                if self._quiet_ok:
                    key = call_signature(module, args, kwargs)
                    quiet = (
                        key is not None
                        and not state.sampled
                        and not state.compiled
                        and key in self._familiar
                    )
                if quiet and not self.quiet:
                    self._detach()
                elif self.quiet and not quiet:
                    self._attach()
            except Exception:  # never quiet rather than ever wrong
                self._quiet_ok, key = False, None
                if self.quiet:
                    self._attach()
        self._keys.append(None if self.quiet else key)
        self._depth += 1
        self._call_pre(module, args)

    def _root_post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if compiling() or transformed() or (_ANY_SUSPENDED[0] and _LOCAL.suspended):
            return
        if not self._depth:
            return  # its pre-hook did not run (the block began inside the call)
        self._depth -= 1
        key = self._keys.pop()
        failing = output is None and sys.exc_info()[1] is not None
        if key is not None and not failing and len(self._familiar) < MAX_FAMILIAR:
            self._familiar.add(key)  # every module of this call was dispatched
        subs = (self._post if self.state.sampled else self._post_every).get(id(module))
        if subs:
            self._call_post(subs, module, args, output, failing, "forward hook")

    # --- every module's calls (the global hooks) ----------------------------------------
    def _dispatch_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if compiling():
            return
        if transformed() or (_ANY_SUSPENDED[0] and _LOCAL.suspended):
            return
        if module is self._own_root:
            return  # its own hooks
        if id(module) not in self._pre:
            if self.state.call_stack and threading.get_ident() == self._thread:
                self._foreign(module)  # inside a call of the model: one it does not own
            return
        if not self._depth:
            self._quiet_ok = False  # a module of the model called on its own
        self._call_pre(module, args)

    def _foreign(self, module: nn.Module) -> None:
        """A module that is not the model's ran inside its forward: layers kept in a plain
        list or dict are not submodules, and `model.parameters()` never lists their
        weights. Noted once per module, those with trainable parameters of their own."""
        seen = self._foreign_seen
        if id(module) in seen or len(seen) >= MAX_FOREIGN:
            return
        seen.add(id(module))
        found = self.state.foreign_modules
        try:
            params = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if not params or len(found) >= MAX_FOREIGN_DESCRIBED:
                return
            # described now: a layer made inside forward() is gone by the end of the run
            opt = self.state.optimizer
            ids = (
                {id(p) for g in opt.param_groups for p in g["params"]} if opt is not None else None
            )
            found.append(
                {
                    "ref": weakref.ref(module),
                    "type": type(module).__name__,
                    "params": sum(p.numel() for p in params),
                    "in_optimizer": None if ids is None else all(id(p) in ids for p in params),
                }
            )
        except Exception:  # an odd module (no weak references): not described
            return

    def _call_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        subs = (self._pre if self.state.sampled else self._pre_every).get(id(module))
        if not subs:
            return
        for probe, fn, _ in subs:
            if not probe.stopped:
                try:
                    fn(module, args)
                except Exception as err:
                    probe.stop(err, "forward pre-hook")

    def _dispatch_post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if compiling() or transformed() or (_ANY_SUSPENDED[0] and _LOCAL.suspended):
            return
        if module is self._own_root:
            return  # its own hooks
        is_loss = isinstance(module, _Loss)
        if not is_loss and id(module) not in self._post:
            return
        sampled = self.state.sampled
        subs = (self._post if sampled else self._post_every).get(id(module))
        # always_call: torch also calls this hook when the forward raised
        failing = output is None and sys.exc_info()[1] is not None
        if subs:
            self._call_post(subs, module, args, output, failing, "forward hook")
        if is_loss and self._loss and threading.get_ident() in self.state.threads:
            self._remember(module)
            loss = self._loss if sampled else self._loss_every
            if loss:
                self._call_post(loss, module, args, output, failing, "loss hook")

    # --- loss modules, also on quiet calls ---------------------------------------------
    def _remember(self, module: nn.Module) -> None:
        """A loss module gets a hook of its own, for the calls the global hooks are off."""
        if not self._quiet_ok:
            # never quiet (a leaf model, several threads, ...): the global hooks see every
            # call, and a hook of its own would be one more call on each of them
            return
        known = self._losses.get(id(module))
        if known is not None and known[0]() is module:
            return
        if len(self._losses) >= MAX_LOSS_MODULES or any(
            ref() is None for ref, _ in self._losses.values()
        ):
            # loss modules made anew (`nn.MSELoss()(y, t)`, one per epoch): a quiet call
            # would miss the next one's first calls
            self._quiet_ok = False
            if len(self._losses) >= MAX_LOSS_MODULES:
                return
        try:
            handle = module.register_forward_hook(self._loss_post, always_call=True)
            self._losses[id(module)] = (weakref.ref(module), handle)
        except Exception:  # a loss that takes no hook (scripted): never quiet, then
            self._quiet_ok = False
            return
        self._handles.append(handle)

    def _loss_post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self.quiet:
            return  # the global hook has it
        self._dispatch_post(module, args, output)

    def _call_post(
        self,
        subs: list[tuple[Probe, Post, bool, bool]],
        module: nn.Module,
        args: tuple[Any, ...],
        output: Any,
        failing: bool,
        where: str,
    ) -> None:
        # `subs` is the list for this step (every step's, or on a sampled step all)
        for probe, fn, always, _ in subs:
            if probe.stopped or (failing and not always):
                continue
            try:
                fn(module, args, output)
            except Exception as err:
                probe.stop(err, where)


class BackwardDispatch:
    """One gradient hook per trainable parameter for all the probes of a run, calling
    subscribers once per backward pass, at its first parameter gradient (before any of
    them is accumulated into `.grad`).

    A per-parameter hook runs for every parameter of every backward pass: a model of
    10 000 small tensors pays for each Python call made there. So the hook is one lean
    closure (a graph-task comparison) and only the first gradient of a pass calls the
    probes, behind the guard. Lazy parameters get their hooks after the first forward.
    """

    def __init__(self, state: WatchState):
        self.state = state
        self._subs: list[tuple[Probe, Callable[[Any], None], bool]] = []
        self._subs_every: list[tuple[Probe, Callable[[Any], None], bool]] = []  # not `sampled`
        self._handles: list[Any] = []
        self.params: list[nn.Parameter] = []

    def first_grad(self, probe: Probe, fn: Callable[[Any], None], *, sampled: bool = False) -> None:
        """`fn(grad)` at the first parameter gradient of each backward pass (with
        `sampled`, of sampled steps only)."""
        if not self._handles:
            self._install()
        item = (probe, fn, sampled)
        self._subs = [*self._subs, item]
        if not sampled:
            self._subs_every = [*self._subs_every, item]
        probe.handles.append(_Removal(lambda: self._unsubscribe(item)))

    def _unsubscribe(self, item: Any) -> None:
        # copy on write: a dispatch in progress keeps iterating the list it started with
        self._subs = [x for x in self._subs if x is not item]
        self._subs_every = [x for x in self._subs_every if x is not item]

    def remove(self) -> None:
        remove_all(self._handles)

    def _install(self) -> None:
        model = self.state.model
        if any(is_lazy(p) for p in model.parameters()):
            # lazy layers get their parameters in the first forward: hook them after it
            def after_first_forward(module: Any, args: Any, output: Any) -> None:
                once.remove()
                self._hook_params()

            once = model.register_forward_hook(after_first_forward)
            self._handles.append(once)
        else:
            self._hook_params()

    def _hook_params(self) -> None:
        self.params = [
            p for p in self.state.model.parameters() if p.requires_grad and not is_lazy(p)
        ]
        current_task = torch._C._current_graph_task_id
        last = [-1]
        first = self._first

        def on_grad(grad: Any) -> None:
            task = current_task()
            if task != last[0]:
                last[0] = task
                first(grad)

        self._handles.extend(p.register_hook(on_grad) for p in self.params)

    def _first(self, grad: Any) -> None:
        if _ANY_SUSPENDED[0] and _LOCAL.suspended:
            return
        for probe, fn, _ in self._subs if self.state.sampled else self._subs_every:
            if not probe.stopped:
                try:
                    fn(grad)
                except Exception as err:
                    probe.stop(err, "gradient hook")


class _Removal:
    def __init__(self, undo: Callable[[], None]):
        self._undo: Callable[[], None] | None = undo

    def remove(self) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()


# --- the probes of one run --------------------------------------------------------------
class _RecursionRoom:
    """Raise the recursion limit by the frames the hooks add to the deepest model call.

    A hooked module call runs through one more frame of torch's than a plain one, so a
    model nested ~200 modules deep that runs plain would hit the limit under watch. The
    room of every active run is added to the limit found before the first one; when a
    run ends the limit shrinks back, unless the program set its own meanwhile.
    """

    _lock = threading.Lock()
    _active: ClassVar[dict[int, int]] = {}
    _limits: ClassVar[dict[str, int]] = {"base": 0, "set": 0}

    def __init__(self, model: nn.Module):
        depth = max((name.count(".") + 1 for name, _ in model.named_modules() if name), default=0)
        self.extra = depth * _FRAMES_PER_LEVEL + _HOOK_FRAMES

    def __enter__(self) -> _RecursionRoom:
        with self._lock:
            limits = self._limits
            if not self._active or sys.getrecursionlimit() != limits["set"]:
                limits["base"] = sys.getrecursionlimit()
                self._active.clear()  # the program set its own limit: start from it
            self._active[id(self)] = self.extra
            limits["set"] = limits["base"] + sum(self._active.values())
            sys.setrecursionlimit(limits["set"])
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            limits = self._limits
            if self._active.pop(id(self), None) is None:
                return
            if sys.getrecursionlimit() == limits["set"]:
                limits["set"] = limits["base"] + sum(self._active.values())
                with contextlib.suppress(RecursionError):
                    sys.setrecursionlimit(limits["set"])


class ProbeSet:
    """The probes of one watched run and every hook they own (see the module docstring)."""

    def __init__(self, state: WatchState, probes: list[Probe], stack: contextlib.ExitStack):
        self.state = state
        self.probes = probes
        self._stack = stack

    @classmethod
    def install(cls, state: WatchState, probe_classes: Iterable[type[Probe]]) -> ProbeSet:
        """Build and install the probes. A probe that fails to install is stopped; the
        others go on. Nothing stays installed if this raises."""
        with contextlib.ExitStack() as stack:
            forwards = ForwardDispatch(state)
            state.forwards = forwards
            stack.callback(setattr, state, "forwards", None)  # no cycle outlives the block
            stack.callback(forwards.remove)
            backwards = BackwardDispatch(state)
            state.backwards = backwards
            stack.callback(setattr, state, "backwards", None)
            stack.callback(backwards.remove)
            stack.enter_context(_RecursionRoom(state.model))
            probes: list[Probe] = []
            for probe_cls in probe_classes:
                probe = probe_cls(state)
                probes.append(probe)
                # every handle the probe holds at close time, also those added later
                stack.callback(lambda p=probe: remove_all(p.handles))
                try:
                    probe.install()
                except Exception as err:
                    stop(probe, err, "install")
                    remove_all(probe.handles)
            return cls(state, probes, stack.pop_all())

    def __iter__(self) -> Iterator[Probe]:
        return iter(self.probes)

    def get(self, cls: type[Probe]) -> Any:
        """The installed probe of a class, or None."""
        return next((p for p in self.probes if isinstance(p, cls)), None)

    def close(self) -> None:
        """Remove every hook, patch and filter of the run (idempotent)."""
        stack, self._stack = self._stack, contextlib.ExitStack()
        try:
            stack.close()
        except Exception as err:  # pragma: no cover - torch handles do not raise
            warnings.warn(f"trainlens could not remove a hook: {err}", RuntimeWarning, stacklevel=3)

    def finish(self, exc: BaseException | None) -> list[str]:
        """Each running probe's `finish(exc)`; a failure stops only that probe.

        Returns what a failing `finish` lost ("CheckpointProbe's end (OSError: ...)"), for
        the one warning the block's end gives about what could not be written. Probes
        stopped during the run are in the drill (`probes_stopped`) and get one line on
        stderr here.
        """
        lost = []
        for probe in self.probes:
            finish = getattr(probe, "finish", None)
            if getattr(probe, "stopped", False) or finish is None:
                continue
            try:
                finish(exc)
            except Exception as err:
                stop(probe, err, "finish")
                lost.append(f"{type(probe).__name__}'s end ({type(err).__name__}: {err})")
        for rec in self.state.extra_meta.get("probes_stopped", ()):
            if rec["where"] == "finish":
                continue
            note = (
                f"trainlens: warning: probe {rec['probe']} stopped at step {rec['step']}: "
                f"{rec['error']}; its records end there (your training was not affected)\n"
            )
            with contextlib.suppress(Exception):  # a closed stderr must not cost the drill
                sys.stderr.write(note)
        return lost
