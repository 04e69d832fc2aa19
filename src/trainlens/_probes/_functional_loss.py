"""Losses written as functions: `F.cross_entropy(logits, y)` is a loss like `nn.CrossEntropyLoss`.

Every loss of `torch.nn.functional` (`cross_entropy`, `nll_loss`, `mse_loss`,
`binary_cross_entropy(_with_logits)`, `l1_loss`, `smooth_l1_loss`, `huber_loss`, `kl_div`,
... the full list is `LOSSES`) is wrapped for the duration of the block. The original
always computes the result, which is returned unchanged. The call is then shown to the
probes as the call of a stand-in `nn` loss module of the matching class, with the same
arguments (reduction, weight, ignore_index, label_smoothing, pos_weight) and the same
output: the loss value, the loss-input evidence (probabilities into a logits loss, the
constant-prediction baseline), the shape check (silent broadcast), the initial loss and
the finiteness of targets come from the probes that already watch `nn` loss modules, one
code path for both. An `nn` loss module calls the same function inside its `forward`:
a call made while a `_Loss` module's forward is the innermost module call in flight is
passed through unseen, so such a loss is recorded once.

What is caught, and what is not:

- `F.cross_entropy(...)` and `torch.nn.functional.cross_entropy(...)`: the attribute of
  `torch.nn.functional` is looked up at call time, and is the wrapper in the block.
- `from torch.nn.functional import cross_entropy` done before the block binds the original
  in the importing module. The names bound so in `__main__` and in the modules that
  define the watched model's classes (where nanoGPT-style `forward`s compute the loss)
  are rebound to the wrapper for the block and restored after it. The same import in any
  other module, a loss kept in a dict, a default argument or a closure, and the `torch.*`
  aliases (`torch.binary_cross_entropy_with_logits`) are not seen: call
  `lens.log_loss(loss)` there (a run that saw no loss says so in its drill).
- Calls inside `torch.compile`d code run the original untouched (a hook there would break
  the graph), as for every probe.

A `TorchFunctionMode` would see every spelling, but it runs Python for every torch call
of the program (each layer, each elementwise op), stacks with the user's own modes and
with `torch.device(...)` contexts, and changes what dynamo traces: too costly and too
intrusive for a loss that is called once per step.
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import _reduction
from torch.nn.modules.loss import _Loss

from ._base import Probe
from ._state import _ANY_SUSPENDED, _LOCAL, compiling, transformed
from ._tensors import int_range, tensor_leaves

#: `torch.nn.functional` loss -> the `nn` loss module computing the same thing
LOSSES: dict[str, type[_Loss]] = {
    "binary_cross_entropy": nn.BCELoss,
    "binary_cross_entropy_with_logits": nn.BCEWithLogitsLoss,
    "cosine_embedding_loss": nn.CosineEmbeddingLoss,
    "cross_entropy": nn.CrossEntropyLoss,
    "ctc_loss": nn.CTCLoss,
    "gaussian_nll_loss": nn.GaussianNLLLoss,
    "hinge_embedding_loss": nn.HingeEmbeddingLoss,
    "huber_loss": nn.HuberLoss,
    "kl_div": nn.KLDivLoss,
    "l1_loss": nn.L1Loss,
    "margin_ranking_loss": nn.MarginRankingLoss,
    "mse_loss": nn.MSELoss,
    "multi_margin_loss": nn.MultiMarginLoss,
    "multilabel_margin_loss": nn.MultiLabelMarginLoss,
    "multilabel_soft_margin_loss": nn.MultiLabelSoftMarginLoss,
    "nll_loss": nn.NLLLoss,
    "poisson_nll_loss": nn.PoissonNLLLoss,
    "smooth_l1_loss": nn.SmoothL1Loss,
    "soft_margin_loss": nn.SoftMarginLoss,
    "triplet_margin_loss": nn.TripletMarginLoss,
    "triplet_margin_with_distance_loss": nn.TripletMarginWithDistanceLoss,
}

#: losses whose "mean" reduction is the mean over the broadcast elements
ELEMENTWISE = frozenset(
    {
        "binary_cross_entropy",
        "binary_cross_entropy_with_logits",
        "huber_loss",
        "l1_loss",
        "mse_loss",
        "poisson_nll_loss",
        "smooth_l1_loss",
        "soft_margin_loss",
    }
)

#: losses that warn about their arguments on every call that uses a default
_WARNS_ALWAYS = frozenset({"kl_div", "linear_cross_entropy"})

#: stand-ins kept per call site; a loop calls its losses from a handful of lines
MAX_STAND_INS = 256

_CALL_IMPL = nn.Module._call_impl.__code__
#: the `forward`s of torch's own loss modules: a call from one of them is the module's,
#: known without walking the stack (a user's `_Loss` subclass is found by the walk)
_LOSS_FORWARDS = frozenset(
    cls.forward.__code__
    for cls in vars(torch.nn.modules.loss).values()
    if isinstance(cls, type) and issubclass(cls, _Loss) and "forward" in vars(cls)
)
# the probes of the blocks active now; the wrappers are installed while it is not empty
_LISTENERS: list[FunctionalLossProbe] = []
# name -> (original, wrapper) while patched
_PATCH: dict[str, tuple[Any, Any]] = {}
# > 0 while a wrapped loss runs (a loss calling another loss is one loss)
_DEPTH = [0]


class FunctionalLossProbe(Probe):
    """`torch.nn.functional` losses seen as the calls of stand-in loss modules."""

    name = "functional_losses"
    writes = ("losses",)

    def install(self) -> None:
        self.handles.append(_Handle(self, _patch(self)))

    def on_failure(self, spec: _Spec, args: tuple, kwargs: dict, exc: BaseException) -> None:
        """The loss raised: where, on which shapes (as a raising loss module records it)."""
        state = self.state
        if state.failure is not None and state.failure.exc_id == id(exc):
            return
        ins = tensor_leaves(spec.forward_args(args, kwargs))
        path = [n for n, _ in state.call_stack] + [spec.display]
        state.record_failure(
            exc, "loss", spec.display, spec.cls.__name__, ins, path, int_range=int_range(ins[1:2])
        )

    def warn_once(self, err: BaseException) -> None:
        if not self.stopped:  # off for the rest of the run; the drill names it
            self.stop(err, "a torch.nn.functional loss")


class _Spec:
    """How one functional loss maps to its module: arguments, stand-ins per call site."""

    def __init__(self, name: str, original: Any, cls: type[_Loss]):
        self.name = name
        self.display = f"F.{name}"
        self.original = original
        self.cls = cls
        self.signature = inspect.signature(original)
        fwd = inspect.signature(cls.forward).parameters
        self.forward_names = [p for p in fwd if p != "self"]
        init = inspect.signature(cls.__init__).parameters
        # what the probes read from a loss module (reduction, weight, ignore_index, ...)
        self.attrs = [
            p
            for p in self.signature.parameters
            if p in init and p not in ("size_average", "reduce")
        ]
        self.stand_ins: dict[tuple[Any, ...], _Loss] = {}
        params = self.signature.parameters.values()
        plain = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        #: names in order and their defaults, for `bind` without `inspect` (a call that
        #: already succeeded needs no checking: ~1 us instead of ~10 on every step)
        self._names = [p.name for p in params] if plain else None
        self._defaults = {p.name: p.default for p in params if p.default is not p.empty}
        #: the arguments after which positional ones may be the legacy `size_average`
        legacy = [i for i, p in enumerate(params) if p.name in ("size_average", "reduce")]
        self._first_legacy = min(legacy, default=len(self.signature.parameters))

    def bind(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        if self._names is None:
            bound = self.signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return dict(bound.arguments)
        values = dict(self._defaults)
        values.update(zip(self._names, args, strict=False))
        values.update(kwargs)
        return values

    def may_warn_at_caller(self, args: tuple, kwargs: dict) -> bool:
        """Can this call give a warning aimed at its caller (`stacklevel=2`)?

        torch's losses do so for a legacy `size_average`/`reduce`, for input and target
        sizes that differ (elementwise losses) and for `kl_div`'s "mean". Only then is
        the call run inside `warnings.catch_warnings` (~10 us).
        """
        if self.name in _WARNS_ALWAYS or len(args) > self._first_legacy:
            return True
        if kwargs.get("size_average") is not None or kwargs.get("reduce") is not None:
            return True
        if self.name in ELEMENTWISE:
            x = args[0] if args else kwargs.get("input")
            t = args[1] if len(args) > 1 else kwargs.get("target")
            return getattr(x, "shape", None) != getattr(t, "shape", None)
        return False

    def forward_args(self, args: tuple, kwargs: dict) -> tuple[Any, ...]:
        try:
            values = self.bind(args, kwargs)
        except TypeError:
            return tuple(args)
        return tuple(values[n] for n in self.forward_names if n in values)

    def stand_in(self, site: tuple[Any, ...], values: dict[str, Any]) -> _Loss:
        module = self.stand_ins.get(site)
        if module is None:
            if len(self.stand_ins) >= MAX_STAND_INS:
                self.stand_ins.clear()
            module = self.cls()
            # the probes name a loss by this; a loss outside the model is no module
            module._trainlens_name = self.display
            self.stand_ins[site] = module
        last = module.__dict__.get("_trainlens_values")
        now = [values[attr] for attr in self.attrs]
        if last is not None and all(a is b for a, b in zip(last, now, strict=True)):
            return module  # the same arguments as at this line's last call
        module.__dict__["_trainlens_values"] = now
        for attr, value in zip(self.attrs, now, strict=True):
            if attr in module._buffers and not (value is None or isinstance(value, torch.Tensor)):
                continue  # a buffer (weight, pos_weight) holds tensors only
            setattr(module, attr, value)
        if values.get("size_average") is not None or values.get("reduce") is not None:
            module.reduction = _reduction.legacy_get_string(
                values.get("size_average"), values.get("reduce"), emit_warning=False
            )
            module.__dict__["_trainlens_values"] = None  # set from the legacy arguments
        return module


def _inside_loss_module(frame: types.FrameType | None) -> bool:
    """Is the innermost module call in flight an `nn` loss module (which records itself)?"""
    while frame is not None:
        if frame.f_code is _CALL_IMPL:
            return isinstance(frame.f_locals.get("self"), _Loss)
        frame = frame.f_back
    return False


def _observe(spec: _Spec, frame: types.FrameType, args: tuple, kwargs: dict, out: Any) -> None:
    """Show the call to the probes as the call of a stand-in loss module."""
    values = spec.bind(args, kwargs)
    module = spec.stand_in((frame.f_code, frame.f_lineno), values)
    fwd = tuple(values[n] for n in spec.forward_names if n in values)
    shown = out
    if module.reduction == "sum" and isinstance(out, torch.Tensor) and out.numel() == 1:
        # a summed loss (Hugging Face's causal-LM loss sums, then divides by the tokens of
        # the whole accumulated batch) is recorded per element, as its "mean" would be:
        # comparable with ln(C), with the constant-prediction level and with a mean-reduced
        # validation loss of the same model
        count = _elements(spec, values)
        if count is not None:
            with torch.no_grad():
                shown = out.detach() / count
            module.reduction = "mean"
            module.__dict__["_trainlens_values"] = None  # not what the call passed
    # the stand-in's forward hands back the result already computed: global forward hooks
    # (the loss probes') see the arguments and the output, and nothing is computed again
    # (the instance dict directly: `nn.Module.__setattr__`/`__delattr__` cost microseconds)
    module.__dict__["forward"] = lambda *a, **k: shown
    try:
        module(*fwd)
    finally:
        module.__dict__.pop("forward", None)


def _elements(spec: _Spec, values: dict[str, Any]) -> Any:
    """What a "mean" reduction would divide the sum by (on device: no sync)."""
    x, t = values.get("input"), values.get("target")
    if not isinstance(x, torch.Tensor) or not isinstance(t, torch.Tensor):
        return None
    if spec.name in ("cross_entropy", "nll_loss"):
        if values.get("weight") is not None:
            return None  # a weighted mean divides by the weights of the targets
        if t.is_floating_point():  # class probabilities: one row per sample
            return max(1, t.numel() // max(1, x.shape[1] if x.dim() >= 2 else x.numel()))
        return (t != values.get("ignore_index", -100)).sum().clamp_min(1)
    if spec.name not in ELEMENTWISE:
        return None  # their "mean" is not the mean of the elements
    try:
        return max(1, math.prod(torch.broadcast_shapes(x.shape, t.shape)))
    except RuntimeError:
        return None


def _trampoline(f: Any, a: tuple, k: dict) -> Any:
    return f(*a, **k)


# the line of the trampoline's call, counted from its first line
_CALL_OFFSET = (
    max(line for *_, line in _trampoline.__code__.co_lines() if line is not None)
    - _trampoline.__code__.co_firstlineno
)


#: (caller's code, line) -> the trampoline that calls from there (bounded)
_TRAMPOLINES: dict[tuple[Any, int], Any] = {}
MAX_TRAMPOLINES = 256


def _call_from(caller: types.FrameType, original: Any, args: tuple, kwargs: dict) -> Any:
    """Call `original` from a frame that has the caller's file, line and globals.

    torch warns with `stacklevel=2` (e.g. MSELoss's "Using a target size ... broadcasting"):
    one frame up from the loss is now the wrapper. Calling through a one-line trampoline
    whose code carries the caller's file and line, and whose globals are the caller's, puts
    the warning where it is without the wrapper: same location, same module for the
    filters, same once-per-location registry. (Catching and re-issuing it instead would
    mutate the filters on every call, which clears every registry: a warning shown once
    per line would then show on every step.) An exception of the loss passes through
    unchanged; its traceback shows the trampoline as one more frame at the caller's line.
    """
    key = (caller.f_code, caller.f_lineno)
    call = _TRAMPOLINES.get(key)
    if call is None:
        try:
            code = _trampoline.__code__.replace(
                co_filename=caller.f_code.co_filename,
                co_firstlineno=max(1, caller.f_lineno - _CALL_OFFSET),
                co_name=caller.f_code.co_name,
            )
            call = types.FunctionType(code, caller.f_globals, caller.f_code.co_name)
        except Exception:  # no line (f_lineno None), an odd code object: call it plainly
            return original(*args, **kwargs)
        if len(_TRAMPOLINES) >= MAX_TRAMPOLINES:
            _TRAMPOLINES.clear()
        _TRAMPOLINES[key] = call
    return call(original, args, kwargs)


def _make_wrapper(spec: _Spec) -> Any:
    original = spec.original

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if compiling() or transformed():
            return original(*args, **kwargs)
        caller = sys._getframe(1)
        if (
            not _LISTENERS
            or _DEPTH[0]
            or (_ANY_SUSPENDED[0] and _LOCAL.suspended)
            or caller.f_code in _LOSS_FORWARDS
            or _inside_loss_module(caller)
        ):
            # not recorded here (a loss module's own hooks record its call); a warning
            # torch aims at the caller (`stacklevel=2`) must still land at the caller's
            # line, as without the wrapper, not at this file
            if spec.may_warn_at_caller(args, kwargs):
                return _call_from(caller, original, args, kwargs)
            return original(*args, **kwargs)
        _DEPTH[0] += 1
        try:
            if spec.may_warn_at_caller(args, kwargs):
                out = _call_from(caller, original, args, kwargs)
            else:
                out = original(*args, **kwargs)
        except Exception as exc:
            for probe in tuple(_LISTENERS):
                try:
                    probe.on_failure(spec, args, kwargs, exc)
                except Exception as err:
                    probe.warn_once(err)
            raise
        finally:
            _DEPTH[0] -= 1
        _DEPTH[0] += 1
        try:
            if any(not p.stopped for p in _LISTENERS):
                _observe(spec, caller, args, kwargs, out)
        except Exception as err:
            for probe in tuple(_LISTENERS):
                probe.warn_once(err)
        finally:
            _DEPTH[0] -= 1
        return out

    wrapper.__trainlens_wrapper__ = True  # type: ignore[attr-defined]
    return wrapper


def _patch(probe: FunctionalLossProbe) -> list[tuple[dict[str, Any], str, Any, Any]]:
    """Install the wrappers (first listener), rebind names imported from F; return those."""
    if not _PATCH:
        for name, cls in LOSSES.items():
            original = getattr(F, name, None)
            if original is None or getattr(original, "__trainlens_wrapper__", False):
                continue
            wrapper = _make_wrapper(_Spec(name, original, cls))
            setattr(F, name, wrapper)
            _PATCH[name] = (original, wrapper)
    _LISTENERS.append(probe)
    return _rebind(probe.state.model)


def _rebind(model: nn.Module) -> list[tuple[dict[str, Any], str, Any, Any]]:
    """`from torch.nn.functional import mse_loss` in `__main__` or the model's own modules."""
    originals = {id(orig): (orig, wrapper) for orig, wrapper in _PATCH.values()}
    names = {"__main__"} | {type(m).__module__ for m in model.modules()}
    rebound = []
    for mod_name in sorted(names):
        if mod_name.startswith("torch.") or mod_name == "torch":
            continue
        namespace = getattr(sys.modules.get(mod_name), "__dict__", None)
        if namespace is None:
            continue
        for key, value in list(namespace.items()):
            pair = originals.get(id(value))
            if pair is not None and value is pair[0]:
                namespace[key] = pair[1]
                rebound.append((namespace, key, pair[0], pair[1]))
    return rebound


class _Handle:
    def __init__(self, probe: FunctionalLossProbe, rebound: list[Any]):
        self.probe = probe
        self.rebound = rebound

    def remove(self) -> None:
        for namespace, key, original, wrapper in self.rebound:
            if namespace.get(key) is wrapper:
                namespace[key] = original
        self.rebound = []
        if self.probe in _LISTENERS:
            _LISTENERS.remove(self.probe)
        if not _LISTENERS:
            for name, (original, wrapper) in list(_PATCH.items()):
                if getattr(F, name, None) is wrapper:
                    setattr(F, name, original)
                # else someone wrapped ours since: leave theirs; ours only passes through
            _PATCH.clear()


def functional_losses_patched() -> bool:
    return any(getattr(getattr(F, n, None), "__trainlens_wrapper__", False) for n in LOSSES)
