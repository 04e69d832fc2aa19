"""Attention written by hand: a softmax over the last axis of query-key scores.

nanoGPT's and minGPT's manual path, annotated-transformer's `attention(query, key, value,
mask, dropout)` and most research code compute attention with plain tensor ops:

    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
    att = att.masked_fill(mask == 0, float("-inf"))
    att = F.softmax(att, dim=-1)        # or torch.softmax / att.softmax(-1)
    y = self.attn_dropout(att) @ v

How they are recognised: on sampled training forwards only, a `TorchFunctionMode` is
active while the watched model runs. It passes every call through unchanged and only
looks at a few functions' outputs, by identity:

- a batched product of two activations (`@`/`matmul`, `bmm`, `baddbmm`, two-operand
  `einsum`): both operands at least 3-d and neither a parameter, the result
  `[..., T_q, T_k]` with at least two queries and two keys. A projection `x @ W` (a 2-d
  weight), a classifier, a gate or a mixture-of-experts router (a `Linear` over features)
  and a pooling/pointer score with a single query are not such a product;
- elementwise steps that keep the scores scores (a scalar scale, `masked_fill` with a
  large negative value, an additive mask, `torch.where`, casts, dropout);
- a softmax over the LAST axis of such scores: these are the attention weights. They are
  summarised like the built-in kinds (per head, with the masks seen on the way), and the
  product with them (`att @ v`) gives the value and output shapes.

A softmax over the queries instead (the axis before the last) of square scores, a
sequence attending to itself, is the bug of `softmax(scores, dim=1)` on `[B, T, T]`
scores: noted in `meta["attention_softmax_axis"]` for the rule.

Not recognised: a softmax over another axis (slot attention, capsule routing), scores
that pass a non-elementwise op (a reshape, `tanh` soft-capping) before the softmax,
products of 2-d tensors (CLIP-style similarity matrices), code run under
`torch.compile`, and attention inside a module trainlens already summarises
(`nn.MultiheadAttention`, SDPA). `lens.log_attention` covers anything else.

Cost: the mode exists only during sampled training forwards of a model with at least one
module class of its own (torch's modules hold no hand-written attention). When the first
`DISCOVER_FORWARDS` of them show no hand-written attention, it is not used again.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ._state import _SUSPENDED, compiling, hook_modules, transformed

if TYPE_CHECKING:
    from ._attention import AttentionProbe

#: what the attention table calls this source
SOURCE = "softmax(q @ k^T)"
#: sampled training forwards looked at before concluding the model has no such attention
DISCOVER_FORWARDS = 2
#: an additive mask entry or a masked_fill value at or below this masks a key out
MASKED_BELOW = -1e4

_T = torch.Tensor
_PRODUCTS = {_T.matmul: "matmul", _T.__matmul__: "matmul", torch.matmul: "matmul",
             _T.bmm: "matmul", torch.bmm: "matmul", torch.baddbmm: "baddbmm",
             _T.baddbmm: "baddbmm", torch.einsum: "einsum"}  # fmt: skip
_SCALES = {_T.mul: "mul", _T.__mul__: "mul", _T.__rmul__: "mul", torch.mul: "mul",
           _T.mul_: "mul", _T.__imul__: "mul", _T.div: "div", _T.__truediv__: "div",
           torch.div: "div", _T.div_: "div", _T.__itruediv__: "div", torch.true_divide: "div",
           _T.true_divide: "div"}  # fmt: skip
_ADDS = {_T.add: "add", _T.__add__: "add", _T.__radd__: "add", torch.add: "add",
         _T.add_: "add", _T.__iadd__: "add", _T.sub: "sub", _T.__sub__: "sub",
         torch.sub: "sub", _T.sub_: "sub"}  # fmt: skip
_FILLS = {_T.masked_fill: "fill", _T.masked_fill_: "fill", torch.masked_fill: "fill",
          torch.where: "where"}  # fmt: skip
# ops after which scores are still the same scores (and weights the same weights)
_KEEPS = {_T.float: "keep", _T.to: "keep", _T.type: "keep", _T.type_as: "keep",
          _T.contiguous: "keep", _T.clone: "keep", F.dropout: "keep", torch.dropout: "keep",
          _T.half: "keep", _T.bfloat16: "keep"}  # fmt: skip
_SOFTMAXES = {F.softmax: "softmax", torch.softmax: "softmax", _T.softmax: "softmax",
              torch.special.softmax: "softmax"}  # fmt: skip
# shape ops a pre-scaled query or key goes through on its way to the product
_RESHAPES = {_T.view: "reshape", _T.reshape: "reshape", _T.transpose: "reshape",
             _T.permute: "reshape"}  # fmt: skip
_KINDS: dict[Any, str] = {**_RESHAPES, **_PRODUCTS, **_SCALES, **_ADDS, **_FILLS, **_KEEPS,
                          **_SOFTMAXES}  # fmt: skip


# torch containers run the user's modules inside: the mode stays as it is there
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class _Scores:
    """What is known about a tensor of attention scores on its way to the softmax."""

    __slots__ = ("head_dim", "k", "masks", "q", "scale")

    def __init__(self, q: list[int], k: list[int], head_dim: int, scale: float | None):
        self.q, self.k, self.head_dim, self.scale = q, k, head_dim, scale
        self.masks: list[tuple[str, torch.Tensor]] = []

    def derived(self, factor: float | None = 1.0) -> _Scores:
        new = _Scores(self.q, self.k, self.head_dim, None)
        if self.scale is not None and factor is not None:
            new.scale = self.scale * factor
        new.masks = list(self.masks)
        return new


class _Weights:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _Tracker(TorchFunctionMode):
    """Passes every call through; tells the watcher about the few it cares for."""

    def __init__(self, watcher: ManualAttention):
        super().__init__()
        self.watcher = watcher

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        kind = _KINDS.get(func)
        if kind is not None and torch.is_grad_enabled() and not _SUSPENDED[0]:
            try:
                self.watcher.see(kind, args, kwargs, out)
            except Exception as err:  # never the user's problem: stop looking, say so
                self.watcher.fail(err)
        return out


class ManualAttention:
    """The hand-written-attention source of an `AttentionProbe`."""

    def __init__(self, probe: AttentionProbe):
        self.probe = probe
        self.state = probe.state
        self.found: set[str] = set()
        self.looked = 0  # sampled training forwards looked at
        self.done = False
        self._mode: _Tracker | None = None
        self._on = False  # the mode is on the stack (not stepped aside in a torch module)
        self._was: list[bool] = []  # `_on` before each module call in flight
        self._switch: list[Any] = []  # the global hooks that step aside, while looking
        self._entered: list[bool] = []
        self._tags: dict[int, tuple[Any, Any]] = {}  # id -> (weakref, _Scores | _Weights)
        self._factors: dict[int, tuple[Any, float]] = {}  # pre-scaled q/k: id -> (ref, x)
        self._pending: dict[str, dict[str, Any]] = {}  # layer rows waiting for v and out
        self._handles: list[Any] = []

    # --- activation around the model's forward ---------------------------------------
    def install(self) -> list[Any]:
        root = self.state.model
        if all(type(m).__module__.startswith("torch.") for m in root.modules()):
            return []  # only torch's own modules: no forward written by hand to look into
        enter, leave = self._caught(self._enter), self._caught(self._leave)
        if _fast_path_sensitive(root):
            # a per-module hook on a TransformerEncoderLayer would change its eval path
            self._handles = [
                hook_modules({root: lambda m, a: enter()}, pre=True),
                hook_modules({root: lambda m, a, o: leave()}, always_call=True),
            ]
        else:
            self._handles = [
                root.register_forward_pre_hook(lambda m, a: enter()),
                root.register_forward_hook(lambda m, a, o: leave(), always_call=True),
            ]
        return [self]  # removed with the probe's handles: `remove()` below

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        while self._entered:
            self._leave()  # a forward that never returned: the mode must not outlive the block
        self._flush()

    def _enter(self) -> None:
        if compiling():
            # nothing recorded, as `_leave` pops nothing: a list mutated while dynamo
            # traces makes it guard on the list and recompile on every call
            return
        state = self.state
        if (
            transformed()
            or self.done
            or _SUSPENDED[0]
            or not state.sampled
            or state.compiled
            or state.split() != "train"
            or self._mode is not None  # the model called inside its own forward
        ):
            self._entered.append(False)
            return
        mode = _Tracker(self)
        mode.__enter__()
        self._mode, self._on, self._was = mode, True, []
        self._entered.append(True)
        glob = nn.modules.module
        # inside torch's own modules (Linear, LayerNorm, ...) there is nothing written by
        # hand, but the other probes' statistics run in their hooks: the mode steps aside
        # there, so looking costs one call per op of the user's own forward code only
        self._switch = [
            glob.register_module_forward_pre_hook(self._caught(self._child_pre)),
            glob.register_module_forward_hook(self._caught(self._child_post), always_call=True),
        ]

    def _child_pre(self, module: nn.Module, args: tuple) -> None:
        if self._mode is None or module is self.state.model or compiling():
            return
        self._was.append(self._on)
        if not isinstance(module, _CONTAINERS):
            self._set(not type(module).__module__.startswith("torch."))

    def _child_post(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._mode is None or module is self.state.model or compiling() or not self._was:
            return
        if self._tags and isinstance(module, nn.Dropout) and args:
            info = self._tag_of(args[0])  # dropout on the weights: still the weights
            if info is not None and isinstance(output, torch.Tensor):
                self._tag(output, info)
        self._set(self._was.pop())

    def _set(self, on: bool) -> None:
        if on == self._on or self._mode is None:
            return
        if on:
            self._mode.__enter__()
        elif torch.overrides._get_current_function_mode() is self._mode:
            self._mode.__exit__(None, None, None)
        else:
            return  # a mode of the user's own sits above ours: leave the stack alone
        self._on = on

    def _leave(self) -> None:
        if compiling() or not self._entered:
            return
        if not self._entered.pop():
            return
        mode, self._mode = self._mode, None
        for handle in self._switch:
            handle.remove()
        self._switch = []
        self._tags.clear()
        self._factors.clear()
        try:
            if mode is not None and self._on:
                mode.__exit__(None, None, None)
        except Exception as err:  # another mode pushed above ours and left there
            self.fail(err)
        self.looked += 1
        self._flush()
        if not self.found and self.looked >= DISCOVER_FORWARDS:
            self.done = True  # no hand-written attention: never pay for looking again
            if not self.state.compiled:  # (changing hooks would recompile a compiled model)
                for handle in self._handles:
                    handle.remove()

    def _caught(self, fn: Any) -> Any:
        """`fn` with its failure confined to the attention probe. Not skipped while suspended
        or stopped: entering and leaving must stay paired."""

        def caught(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as err:
                self.fail(err)
                self.probe.stop(err, getattr(fn, "__name__", "hook"))

        return caught

    def fail(self, err: BaseException) -> None:
        if not self.done:
            self.done = True
            self.state.event(
                "probe_error",
                None,
                f"hand-written attention no longer observed: {type(err).__name__}: {err}",
            )

    # --- what the mode sees ------------------------------------------------------------
    def _tag_of(self, t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return None
        entry = self._tags.get(id(t))
        if entry is None or entry[0]() is not t:
            return None
        return entry[1]

    def _tag(self, t: Any, info: Any) -> None:
        if isinstance(t, torch.Tensor):
            self._tags[id(t)] = (weakref.ref(t), info)

    def _factor(self, t: Any) -> float:
        entry = self._factors.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else 1.0

    def see(self, kind: str, args: tuple, kwargs: dict, out: Any) -> None:
        if self.done or not isinstance(out, torch.Tensor):
            return
        if kind == "reshape":
            f = self._factor(args[0]) if args else 1.0
            if f != 1.0:
                self._factors[id(out)] = (weakref.ref(out), f)
            return
        if kind in ("matmul", "baddbmm", "einsum"):
            self._product(kind, args, kwargs, out)
            return
        if kind == "softmax":
            self._softmax(args, kwargs, out)
            return
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        tagged = next((t for t in tensors if self._tag_of(t) is not None), None)
        if tagged is None:
            if kind in ("mul", "div"):
                self._note_prescale(kind, args, out)
            return
        info = self._tag_of(tagged)
        if out.shape != tagged.shape:
            return  # broadcast to something else: no longer these scores
        if isinstance(info, _Weights):
            if kind == "keep":
                self._tag(out, info)
            return
        if kind in ("mul", "div"):
            other = next((a for a in args if a is not tagged), kwargs.get("other"))
            if isinstance(other, (int, float)) and not isinstance(other, bool):
                factor = float(other) if kind == "mul" or args[0] is not tagged else None
                if kind == "div" and args[0] is tagged:
                    factor = 1.0 / float(other) if other else None
                self._tag(out, info.derived(factor))
            else:
                self._tag(out, info.derived(None))  # a tensor factor: the scale is unknown
        elif kind in ("add", "sub"):
            new = info.derived()
            other = next((a for a in args if a is not tagged), kwargs.get("other"))
            if (
                kind == "add"
                and isinstance(other, torch.Tensor)
                and other.is_floating_point()
                and self._tag_of(other) is None
            ):
                new.masks.append(("additive", other))
            self._tag(out, new)
        elif kind == "fill":
            new = info.derived()
            if len(args) >= 3 and args[0] is tagged:  # masked_fill(scores, mask, value)
                value = args[2]
                mask = args[1]
            elif len(args) >= 2 and tagged is args[0]:  # scores.masked_fill(mask, value=..)
                mask, value = args[1], kwargs.get("value")
            elif len(args) >= 3 and args[1] is tagged:  # torch.where(cond, scores, other)
                if _is_masking(args[2]):
                    new.masks.append(("keep_where", args[0]))
                self._tag(out, new)
                return
            else:
                return
            if isinstance(mask, torch.Tensor) and _is_masking(value):
                new.masks.append(("fill", mask))
            self._tag(out, new)
        elif kind == "keep":
            self._tag(out, info.derived())

    def _note_prescale(self, kind: str, args: tuple, out: torch.Tensor) -> None:
        """`q = q * scale` before the product: remember the factor for the scores."""
        if len(args) != 2 or out.dim() < 2:
            return
        a, b = args
        if isinstance(a, torch.Tensor) and isinstance(b, (int, float)):
            t, x = a, float(b)
        elif isinstance(b, torch.Tensor) and isinstance(a, (int, float)) and kind == "mul":
            t, x = b, float(a)
        else:
            return
        if kind == "div":
            if x == 0:
                return
            x = 1.0 / x
        self._factors[id(out)] = (weakref.ref(out), self._factor(t) * x)

    def _product(self, kind: str, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        alpha = 1.0
        if kind == "einsum":
            ops = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
            if len(ops) != 2:
                return
            a, b = ops
        elif kind == "baddbmm":
            if len(args) < 3:
                return
            a, b = args[1], args[2]
            alpha = kwargs.get("alpha", 1.0)
        else:
            if len(args) < 2:
                return
            a, b = args[0], args[1]
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return
        weights = self._tag_of(a)
        if isinstance(weights, _Weights):  # att @ v: the value and output shapes
            row = self._pending.get(weights.name)
            if row is not None and row.get("v") is None:
                row["v"], row["out"] = list(b.shape), list(out.shape)
            return
        if not _attention_shaped(kind, a, b, out):
            return
        if kind == "einsum":
            k_shape, head_dim = list(b.shape), int(a.shape[-1])
        else:
            k_shape = [*b.shape[:-2], b.shape[-1], b.shape[-2]]
            head_dim = int(a.shape[-1])
        scale = None if not isinstance(alpha, (int, float)) else float(alpha)
        if scale is not None:
            scale *= self._factor(a) * self._factor(b)
        info = _Scores(list(a.shape), k_shape, head_dim, scale)
        if kind == "baddbmm" and isinstance(args[0], torch.Tensor):
            info.masks.append(("additive", args[0]))
        self._tag(out, info)

    def _softmax(self, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        x = args[0] if args else kwargs.get("input")
        info = self._tag_of(x)
        if not isinstance(info, _Scores):
            return
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        stack = self.state.call_stack
        name = stack[-1][0] if stack else ""
        if isinstance(dim, int) and dim in (-2, out.dim() - 2) and out.shape[-1] == out.shape[-2]:
            # over the queries of a sequence attending to itself: each key's column sums to
            # 1, not each query's row (`softmax(scores, dim=1)` on [B, T, T] scores). Slot
            # attention normalises over its slots on purpose, but its K slots attend to N
            # inputs, not a square of one sequence
            self._note_query_axis(name, dim, out)
            return
        if not isinstance(dim, int) or dim not in (-1, out.dim() - 1):
            return  # over another axis (or the legacy implicit dim): not over the keys
        probe = self.probe
        if name in probe.mha_names:
            return
        self.found.add(name)
        self._tag(out, _Weights(name))
        if probe._wanted(name):
            probe._guarded(self._record, name, out, info)

    def _note_query_axis(self, name: str, dim: int, out: torch.Tensor) -> None:
        if name in self.probe.mha_names:
            return
        self.found.add(name)  # attention all the same: keep looking at this model
        seen = self.state.extra_meta.setdefault("attention_softmax_axis", {})
        if name not in seen:
            seen[name] = {"dim": dim, "shape": list(out.shape), "step": self.state.step}

    def _record(self, name: str, weights: torch.Tensor, info: _Scores) -> None:
        from ._attention_math import _as_bhls, _no_autocast, _samples_to_keep, _thin

        with torch.no_grad(), _no_autocast(weights):
            w = weights.detach()
            w4 = _as_bhls(w)
            keep = _samples_to_keep(*w4.shape)
            w4 = w4[:keep].float()
            allowed = _allowed(info.masks, w.shape)
            if allowed is not None:
                allowed = _as_bhls(allowed)[:keep]
            first = name not in self.probe._layers_seen and name not in self._pending
            mask_kind = _mask_kind(allowed) if first else None
            if first and allowed is not None:
                self.probe.note_empty_rows(name, SOURCE, allowed)
            w4, allowed = _thin(w4, allowed)
            self.probe._summarise(name, SOURCE, w4, allowed)
        if first:
            self._pending[name] = {
                "q": info.q,
                "k": info.k,
                "v": None,
                "out": None,
                "heads": int(w.shape[-3]) if w.dim() >= 4 else 1,
                "head_dim": info.head_dim,
                "scale": info.scale,
                "mask": mask_kind,
            }

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for name, r in pending.items():
            self.probe._layer_once(
                name, SOURCE, r["q"], r["k"], r["v"], r["out"], r["heads"], r["head_dim"],
                r["scale"], r["mask"],
            )  # fmt: skip


def _attention_shaped(kind: str, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> bool:
    """A batched product of two activations giving `[..., T_q >= 2, T_k >= 2]` scores."""
    if isinstance(a, nn.Parameter) or isinstance(b, nn.Parameter):
        return False
    if a.dim() < 3 or b.dim() < 3 or out.dim() < 3 or not out.is_floating_point():
        return False
    if out.shape[-2] < 2 or out.shape[-1] < 2:
        return False  # one query: a pointer or pooling weight over a set
    if kind == "einsum":
        return a.shape[-1] == b.shape[-1] and out.shape[-2] == a.shape[-2]
    return a.shape[-2] == out.shape[-2] and b.shape[-1] == out.shape[-1]


def _is_masking(value: Any) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value <= MASKED_BELOW
    return False


def _allowed(masks: list[tuple[str, torch.Tensor]], shape: torch.Size) -> torch.Tensor | None:
    allowed = None
    for kind, m in masks:
        m = m.detach()
        if kind == "fill":
            ok = ~m.bool()
        elif kind == "keep_where":
            ok = m.bool()
        else:
            ok = m > MASKED_BELOW
        try:
            ok = torch.broadcast_to(ok, shape)
        except RuntimeError:
            continue  # a mask that does not line up with the weights: not a key mask
        allowed = ok if allowed is None else allowed & ok
    return allowed


def _mask_kind(allowed: torch.Tensor | None) -> str | None:
    """'causal' when every row sees exactly the keys up to its own position."""
    if allowed is None:
        return None
    L, S = allowed.shape[-2:]
    tril = torch.ones(L, S, dtype=torch.bool, device=allowed.device).tril(S - L)
    if bool((allowed == tril).all()):  # once per layer, at its first observation
        return "causal"
    return "mask"


def _fast_path_sensitive(module: nn.Module) -> bool:
    return isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerEncoder))
