"""Batch dependency: does sample i's output depend on sample j's input?

A model must treat the samples of a batch independently (BatchNorm in training mode
aside). A `view` where a `permute` was meant, or `batch_first` set wrong on an RNN or an
attention layer, silently mixes samples; the loss still goes down a little, and nothing
crashes. The check: run the model once more on the same batch, take the gradient of one
sample's output with respect to the whole input batch (for integer inputs such as token
ids, with respect to the first floating-point activation) and see whether it is zero for
the other samples.

The check runs once per watched run, after the first training forward, and in
`overfit-one-batch` before training. The extra pass changes nothing the user computes:
every module in eval mode (no running statistics updated, no dropout), buffers swapped
for copies and the exact training flags restored afterwards,
`torch.random.fork_rng` around it, `torch.autograd.grad` with respect to the input only
(no parameter `.grad` touched), and `suspended()` so the probes ignore it.

When the output mixes samples, the tensors seen on the way (module inputs in call order,
module outputs as they are produced) are checked the same way; the first one that mixes
names where the mixing starts.

Which axis is the batch is the data's to say, not the model's declared layout: every
candidate axis (0, and 1 of a 3-d input) is measured, and `choose_batch_axis` picks the
batch from the batch size a caller knows, or, for language models, from the axis along
which the target is the input shifted by one (time; the other axis is the batch), read
from targets given to the forward or from the gradient a class-index loss sends to the
logits at the first backward. A seq-first RNN or attention fed `[batch, time]` (or the
reverse) is then caught. Without such evidence the first axis that keeps samples apart
is taken. The extra pass runs on copies of the buffers (queues, caches, counters), so
the user's own buffers keep their bits and their autograd versions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ._base import Probe, hook
from ._state import WatchState, suspended
from ._tensors import tensor_leaves

#: a slice with gradient norm below this fraction of the own sample's counts as zero
LEAK_TOL = 1e-5
#: module tensors checked when looking for the place mixing starts (one backward each)
MAX_TRACE = 96


class _Skip(Exception):
    """The check cannot be made on this model/batch; the reason goes into the record."""


def check_batch_dependency(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None = None,
    *,
    batch_size: int | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure whether samples of `args` influence each other's outputs in `model`.

    Returns plain numbers: `{"checked": bool, "mixed": bool, ...}`; `"skipped"` says why
    when the check was not possible. Never raises for the model's sake: a model that
    fails in the extra pass is reported as skipped. `batch_size` (e.g. the number of
    targets) narrows which input axis is the batch; `data` says which axis the data
    holds the samples on (`batch_axis_from_targets`), measured per axis in `"axes"`.
    """
    kwargs = dict(kwargs or {})
    flags = [(m, m.training) for m in model.modules()]
    devices = _cuda_devices(args, kwargs, model)
    try:
        buffers = _snapshot_buffers(model)
    except Exception as err:  # e.g. no memory for the copies: no check rather than a change
        return {"checked": False, "mixed": False, "skipped": f"buffers not copyable: {err}"}
    try:
        with (
            torch.random.fork_rng(devices=devices),
            suspended(),
            torch.enable_grad(),
        ):
            model.eval()
            return choose_batch_axis(_check(model, args, kwargs, batch_size), data)
    except _Skip as why:
        return {"checked": False, "mixed": False, "skipped": str(why)}
    except Exception as err:  # the user's model is free to dislike a second pass
        return {
            "checked": False,
            "mixed": False,
            "skipped": f"the extra pass raised {type(err).__name__}: {str(err)[:200]}",
        }
    finally:
        for m, training in flags:
            m.training = training
        _restore_buffers(buffers)


_Saved = list[tuple[nn.Module, dict[str, Any]]]


def _snapshot_buffers(model: nn.Module) -> _Saved:
    """Give the extra pass its own copies of every buffer, keeping the originals aside.

    A forward may update a queue, a cache or a counter in place (`self.queue[:, i] = k`,
    `self.count += 1`) or rebind it (`self.cache = torch.cat(...)`), even in eval mode.
    Writing the originals back afterwards is not enough: an in-place write (and the copy
    back) bumps the version of a buffer the user's own forward saved for backward, and
    their `loss.backward()` would raise. So the originals are never touched."""
    saved = [(m, dict(m._buffers)) for m in model.modules()]
    try:
        for m, bufs in saved:
            for name, buf in bufs.items():
                if isinstance(buf, torch.Tensor):
                    m._buffers[name] = buf.detach().clone()
    except BaseException:
        _restore_buffers(saved)
        raise
    return saved


def _restore_buffers(saved: _Saved) -> None:
    for m, bufs in saved:
        m._buffers.clear()  # the copies (and anything the pass added) go
        m._buffers.update(bufs)


def _cuda_devices(args: Any, kwargs: Any, model: nn.Module) -> list[int]:
    tensors = tensor_leaves((args, kwargs)) + list(itertools.islice(model.parameters(), 4))
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


class _Trace:
    """Forward hooks of the extra pass: the leaf to differentiate and tensors on the way."""

    def __init__(self, model: nn.Module, float_input: bool):
        self.names = {id(m): n for n, m in model.named_modules()}
        self.types = {n: type(m).__name__ for n, m in model.named_modules()}
        self.leaf: torch.Tensor | None = None
        self.leaf_module: str | None = None
        self.need_leaf = not float_input
        self.stack: list[str] = []
        # (where, module, parent, tensor), in the order they were computed
        self.seen: list[tuple[str, str, str | None, torch.Tensor]] = []
        self.handles: list[RemovableHandle] = []
        for m in model.modules():
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def _pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        name = self.names[id(module)]
        parent = self.stack[-1] if self.stack else None
        self.stack.append(name)
        if self.leaf is not None and len(self.seen) < MAX_TRACE:
            x = _first_float(args)
            if x is not None and x.requires_grad:
                self.seen.append(("input", name, parent, x))

    def _post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        name = self.names[id(module)]
        if self.stack and self.stack[-1] == name:
            self.stack.pop()
        out = _first_float(output)
        if out is None:
            return None
        if self.need_leaf and self.leaf is None:
            # integer inputs (token ids): differentiate w.r.t. the first float activation
            if isinstance(output, torch.Tensor) and next(module.children(), None) is None:
                self.leaf = output.detach().clone().requires_grad_(True)
                self.leaf_module = name
                return self.leaf.clone()  # not the leaf itself: in-place ops stay legal
            return None
        if self.leaf is not None and out.requires_grad and len(self.seen) < MAX_TRACE:
            self.seen.append(("output", name, None, out))
        return None


def _check(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], batch_size: int | None
) -> dict[str, Any]:
    inputs = tensor_leaves((args, kwargs))
    # the data is the first tensor argument: token ids (then the first activation is
    # differentiated) or features; a float hidden state passed after ids is not the data
    first = next((t for t in inputs if t.dim() >= 1), None)
    x = first if first is not None and first.is_floating_point() else None
    # an [N, N] operator over the N rows (a graph's adjacency, sparse or beside [N, F]
    # node features) says the rows are nodes the model relates on purpose, not samples
    if first is not None:
        n = first.shape[0]
        for t in inputs:
            square = t is not first and t.dim() == 2 and t.shape[0] == t.shape[1] == n
            node_features = first.dim() == 2 and first.is_floating_point()
            if square and (t.layout != torch.strided or node_features):
                raise _Skip(
                    f"the rows of the input {list(first.shape)} are related by an "
                    f"[{n}, {n}] input (a graph's adjacency): they are not independent samples"
                )
    trace = _Trace(model, float_input=x is not None)
    try:
        if x is not None:
            leaf = x.detach().clone().requires_grad_(True)
            trace.leaf = leaf
            args, kwargs = _replace(args, x, leaf.clone()), _replace(kwargs, x, leaf.clone())
        elif not inputs:
            raise _Skip("the model got no tensor input")
        output = model(*args, **kwargs)
    finally:
        trace.remove()
    leaf = trace.leaf
    if leaf is None:
        raise _Skip("no floating-point input or activation to differentiate")
    out = _first_float(output)
    if out is None or not out.requires_grad:
        raise _Skip("the output is not a floating-point tensor that depends on the input")
    # the batch is axis 0, or axis 1 of a seq-first input; never the features of [N, F].
    # Axis 1 is only a candidate beside a testable axis 0 (or a known batch size): in a
    # batch-first [1, T, F] it is time, which RNNs and attention mix on purpose.
    fits = [
        leaf.shape[a] >= 2 and (batch_size is None or leaf.shape[a] == batch_size)
        for a in range(min(2, leaf.dim()))
    ]
    axes = [0] if fits[0] else []
    if leaf.dim() >= 3 and fits[1] and (fits[0] or batch_size is not None):
        axes.append(1)
    if not axes:
        raise _Skip(f"the batch is too small to compare samples (input {list(leaf.shape)})")

    result: dict[str, Any] = {
        "checked": False,
        "mixed": False,
        "input": list(leaf.shape),
        "leaf": "input" if x is not None else f"output of `{trace.leaf_module}`",
        "leaf_module": trace.leaf_module,
        "output": list(out.shape),
    }
    # every candidate axis is measured: which one is the batch is the data's to say
    # (`choose_batch_axis`), not the model's, and the data may only say so later
    measured: dict[str, Any] = {}
    for a in axes:
        dep = _dependency(out, leaf, a)
        if dep is None:
            continue
        dep["batch"] = int(leaf.shape[a])
        if dep["mixed"]:
            dep.update(_where_mixing_starts(trace, leaf, a))
        measured[str(a)] = dep
    if not measured:
        raise _Skip(
            f"no axis of the output {list(out.shape)} lines up with the batch axis of the "
            f"input {list(leaf.shape)}"
        )
    result["checked"] = True
    result["axes"] = measured
    return result


#: per-axis numbers `choose_batch_axis` copies to the top of the result
_AXIS_KEYS = (
    "mixed", "batch", "max_leak", "sample", "other", "grad_other", "grad_own",
    "mixed_samples", "module", "module_type", "starts", "first_mixed", "last_clean",
)  # fmt: skip


def choose_batch_axis(result: dict[str, Any], data: dict[str, Any] | None) -> dict[str, Any]:
    """Decide which measured axis is the batch, and so whether samples mix.

    `data` is what the data says (`{"axis": a, "from": "...", ...}`, see
    `batch_axis_from_targets`); without it the first axis that keeps samples apart is
    taken for the batch (a model is given the benefit of the doubt), else axis 0.
    """
    measured = result.get("axes") or {}
    if not measured:
        return result
    for key in (*_AXIS_KEYS, "batch_axis", "batch_axis_from", "time_axis", "data_evidence"):
        result.pop(key, None)
    if data is not None and str(data["axis"]) in measured:
        a = int(data["axis"])
        result["batch_axis_from"] = "data"
        result["data_evidence"] = data
        if data.get("time_axis") is not None:
            result["time_axis"] = data["time_axis"]
    else:
        clean = [int(k) for k, d in measured.items() if not d["mixed"]]
        a = clean[0] if clean else int(next(iter(measured)))
        result["batch_axis_from"] = "model"
    dep = measured[str(a)]
    result["batch_axis"] = a
    result.update({k: dep[k] for k in _AXIS_KEYS if k in dep})
    return result


def batch_axis_from_targets(ids: torch.Tensor, target: torch.Tensor, source: str) -> dict | None:
    """The batch axis of `[A0, A1]` token ids, from language-model targets.

    The target is the input shifted by one position along the time axis (next-token
    prediction; also the previous token): along that axis nearly every position matches,
    along the other only by chance. The other axis is the batch.
    """
    if ids.dim() != 2 or target.numel() != ids.numel() or ids.is_floating_point():
        return None
    if target.is_floating_point() or target.is_complex():
        return None
    y = target.reshape(ids.shape).to(ids.device)
    match = []
    for t in (0, 1):
        n = ids.shape[t]
        if n < 3:
            match.append(0.0)
            continue
        ahead = (ids.narrow(t, 1, n - 1) == y.narrow(t, 0, n - 1)).float().mean()
        behind = (ids.narrow(t, 0, n - 1) == y.narrow(t, 1, n - 1)).float().mean()
        match.append(float(torch.maximum(ahead, behind)))
    t = 0 if match[0] > match[1] else 1
    if match[t] < SHIFT_MATCH or match[1 - t] > CHANCE_MATCH:
        return None  # not a shifted copy, or one along both axes: the data does not say
    return {
        "axis": 1 - t,
        "time_axis": t,
        "from": source,
        "match": round(match[t], 4),
        "match_other": round(match[1 - t], 4),
        "ids": list(ids.shape),
    }


#: share of positions where the target is the input shifted by one along the time axis
SHIFT_MATCH = 0.9
#: ...and at most this share along the batch axis (chance: about 1 / vocabulary size)
CHANCE_MATCH = 0.5


def _dependency(out: torch.Tensor, leaf: torch.Tensor, a: int) -> dict[str, Any] | None:
    """Gradients of probed samples' outputs w.r.t. every input sample along axis `a`."""
    n = leaf.shape[a]
    best = None
    for view, b in _batch_views(out, n):
        probes = sorted({0, n - 1})
        rows = []
        for i in probes:
            grad = _grad_of_sample(view, b, i, leaf)
            if grad is None:
                continue
            norms = grad.movedim(a, 0).reshape(n, -1).norm(dim=1).double().cpu()
            rows.append((i, norms))
        if not rows:
            continue
        dep = _summarise(rows, n)
        if dep is None:
            continue
        if not dep["mixed"]:
            return dep
        best = best or dep
    return best


def _summarise(rows: list[tuple[int, torch.Tensor]], n: int) -> dict[str, Any] | None:
    total = sum(float(r.sum()) for _, r in rows)
    if not math.isfinite(total) or total == 0.0:
        return None  # the output does not depend on the input at all: nothing to say
    worst = {"mixed": False, "max_leak": 0.0}
    top = -1.0
    mixed_samples: set[int] = set()
    for i, norms in rows:
        own = float(norms[i])
        scale = max(own, float(norms.max()), 1e-30)
        others = norms.clone()
        others[i] = 0.0
        j = int(others.argmax())
        leak = float(others[j]) / scale
        mixed_samples.update(int(k) for k in torch.nonzero(others > LEAK_TOL * scale).flatten())
        if leak > top:
            top = leak
            worst = {
                "mixed": leak > LEAK_TOL,
                "max_leak": leak,
                "sample": i,
                "other": j,
                "grad_other": float(others[j]),
                "grad_own": own,
            }
    worst["mixed_samples"] = len(mixed_samples)
    return worst


def _batch_views(t: torch.Tensor, n: int) -> Iterator[tuple[torch.Tensor, int]]:
    """Ways `t` can hold `n` samples: along axis 0 or 1, or flattened into axis 0."""
    if t.dim() == 0:
        return
    for b in range(min(2, t.dim())):
        if t.shape[b] == n:
            yield t, b
    first = t.shape[0]
    if first != n and first % n == 0:
        yield t.reshape(n, first // n, *t.shape[1:]), 0  # [batch * seq, ...] batch-major
        yield t.reshape(first // n, n, *t.shape[1:]), 1  # [seq * batch, ...] seq-major


def _grad_of_sample(view: torch.Tensor, b: int, i: int, leaf: torch.Tensor) -> torch.Tensor | None:
    y = view.select(b, i)
    # fixed, non-uniform weights: a plain sum could cancel (softmax rows sum to one)
    w = torch.linspace(1.0, 2.0, y.numel(), device=y.device, dtype=y.dtype).reshape(y.shape)
    (grad,) = torch.autograd.grad((y * w).sum(), leaf, retain_graph=True, allow_unused=True)
    return grad


def _where_mixing_starts(trace: _Trace, leaf: torch.Tensor, a: int) -> dict[str, Any]:
    """The first tensor on the way that mixes samples names the module to blame."""
    last_clean: str | None = trace.leaf_module
    for where, name, parent, t in trace.seen:
        dep = _dependency(t, leaf, a)
        if dep is None:
            continue
        if not dep["mixed"]:
            if where == "output":
                last_clean = name
            continue
        if where == "input":
            # mixed before it reached `name`: the reshape is in the caller's forward code
            return {
                "module": parent if parent is not None else name,
                "module_type": trace.types.get(parent if parent is not None else name),
                "starts": "between",
                "first_mixed": name,
                "last_clean": last_clean,
            }
        return {
            "module": name,
            "module_type": trace.types.get(name),
            "starts": "inside",
            "first_mixed": name,
            "last_clean": last_clean,
        }
    return {"module": None, "module_type": None, "starts": None, "last_clean": last_clean}


def _first_float(value: Any) -> torch.Tensor | None:
    for t in tensor_leaves(value):
        if t.is_floating_point() and t.dim() >= 1:
            return t
    return None


def _replace(value: Any, old: torch.Tensor, new: torch.Tensor) -> Any:
    if value is old:
        return new
    if isinstance(value, tuple):
        return tuple(_replace(v, old, new) for v in value)
    if isinstance(value, list):
        return [_replace(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _replace(v, old, new) for k, v in value.items()}
    return value


class BatchDependencyProbe(Probe):
    """Runs the check once, right after the first training forward of the watched model.

    After, not before: when the model itself raises, the user's real forward raises
    first and is recorded as usual; the check only runs on a model that worked.
    """

    name = "batch_dependency"
    once = True

    def __init__(self, state: WatchState):
        super().__init__(state)
        self._done = False

    def install(self) -> None:
        if isinstance(self.state.model, torch.jit.ScriptModule):
            return  # no hooks on TorchScript (the compile probe says what is not seen)
        self.handles.append(
            self.state.model.register_forward_hook(self._on_forward, with_kwargs=True)
        )

    def retire(self) -> None:
        """Done for this run (it checks one batch): its hook goes."""
        self._done = True
        if self.state.compiled:
            return  # changing the hooks would make dynamo guard, recompile the model
        for handle in self.handles:
            handle.remove()

    @hook
    def _on_forward(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if self._done or self.state.split() != "train":
            return
        self.retire()
        # the batch size, when the caller handed it in (`lens.note("batch_size", n)`:
        # overfit-one-batch knows its number of targets)
        hint = self.state.extra_meta.get("batch_size")
        hint = hint if isinstance(hint, int) and not isinstance(hint, bool) else None
        ids, data = _ids_and_targets(args, kwargs)
        result = check_batch_dependency(module, args, kwargs, batch_size=hint, data=data)
        record(self.state, result)
        if data is None and ids is not None and len(result.get("axes") or {}) > 1:
            self._read_targets_from_gradient(output, ids, result)

    def _read_targets_from_gradient(
        self, output: Any, ids: torch.Tensor, result: dict[str, Any]
    ) -> None:
        """A loss outside the model (functional or not) shows its class targets in the
        gradient it sends to the logits: for cross-entropy and NLL the target class is
        the one entry of each row that is negative (p - 1 or -1/N; the others are p or 0).
        Read once, at the first backward, to let the data decide the batch axis."""
        out = _first_float(output)
        if out is None or not out.requires_grad or out.dim() < 2:
            return
        if out.numel() != ids.numel() * out.shape[-1] or out.shape[-1] < 2:
            return  # not one row of class scores per token
        state, ids = self.state, ids.detach().clone()
        handle: list[Any] = []

        def on_grad(grad: torch.Tensor) -> None:
            for h in handle:
                h.remove()  # once
            try:
                with torch.no_grad():
                    target = grad.detach().argmin(-1)
                    data = batch_axis_from_targets(ids, target, "targets in the loss gradient")
                if data is not None:
                    record(state, choose_batch_axis(result, data))
            except Exception as err:  # our reading, never the user's backward
                state.event("probe_error", None, f"batch axis not read from targets: {err}")

        handle.append(out.register_hook(on_grad))
        self.handles.append(handle[0])


def _ids_and_targets(args: Any, kwargs: Any) -> tuple[torch.Tensor | None, dict | None]:
    """Token ids `[A0, A1]` given to the model and, when the forward also gets the targets
    (nanoGPT's `model(idx, targets)`), what they say about the batch axis."""
    inputs = [t for t in tensor_leaves((args, kwargs)) if t.dim() >= 1]
    if not inputs or inputs[0].is_floating_point() or inputs[0].dim() != 2:
        return None, None
    ids = inputs[0]
    if ids.dtype == torch.bool:
        return None, None
    for t in inputs[1:]:
        if t.shape == ids.shape and not t.is_floating_point() and t.dtype != torch.bool:
            with torch.no_grad():
                data = batch_axis_from_targets(ids, t, "targets passed to the forward")
            if data is not None:
                return ids, data
    return ids, None


def record(state: WatchState, result: dict[str, Any]) -> None:
    """Put a check's numbers where the rules read them: the run metadata."""
    state.extra_meta["batch_dependency"] = result
