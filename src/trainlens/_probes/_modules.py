"""Forward hooks on every module of the watched model.

They keep the stack of forwards in flight (so a crash names the innermost module), the
shape trace (each distinct input/output signature once), activation statistics of leaf
modules on sampled training steps, and statistics of the model's input.
"""

from __future__ import annotations

import json
import math
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ._base import Probe, guarded
from ._calls import module_calls
from ._state import WatchState
from ._tensors import (
    detached,
    distinct,
    dtype_names,
    first_float,
    int_range,
    nbytes,
    shapes,
    signature,
    tensor_leaves,
    version,
)

#: distinct shape signatures recorded per module; past it shapes "vary" and are not traced
MAX_SIGNATURES = 8
#: elements of a large activation that its zero fraction and mean |x| are estimated from
#: (its extremes, which the finiteness check reads, always come from all of it)
ACTIVATION_SAMPLE = 8192
#: a model input up to this many elements is copied, and its statistics are taken at the
#: read-back for all sampled steps' inputs of its size in stacked passes: ten kernels
#: over a small input cost more than copying it (on a CPU, 16k elements: copy 4 us and
#: 15 us a row stacked, against 24 us for the kernels; at 64k the copy loses)
BATCHED_INPUT = 16_384
#: elements of one stacked block of copied inputs (256 KB of float32: it stays in the cache)
STACKED_ELEMENTS = 65_536
#: elements of copied inputs held before they are reduced even without a read-back (an
#: eval-only loop never completes a step): 16 MB of float32 at most
MAX_PENDING_ELEMENTS = 4_194_304
#: outputs up to this many elements are copied and reduced at the read-back, stacked with
#: the other sampled steps' (float64 ones, not narrowed, take a kernel-lean path instead)
SMALL_ACTIVATION = 4096
#: neighbouring elements per block of a large activation's sample
SAMPLE_BLOCK = 64


class _RawRows:
    """Deferred sink: raw device sums become a table's row on the host, at the flush.

    The last prefix item is the element count the sums are divided by; `finish` maps
    (prefix without it, count, values) to the row.
    """

    def __init__(self, table: Any, finish: Any):
        self.table, self.finish = table, finish

    def append(self, *row: Any) -> None:
        self.table.append(*self.finish(row))

    def extend(self, rows: list[tuple[Any, ...]]) -> None:
        finish = self.finish
        self.table.extend([finish(row) for row in rows])


def _max_abs(lo: float, hi: float) -> float:
    if lo != lo or hi != hi:
        return math.nan
    return max(abs(lo), abs(hi))


def _activation_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    step, name, type_name, n, nonzero, total, lo, hi = row
    return step, name, type_name, 1.0 - nonzero / n, total / n, _max_abs(lo, hi)


def _input_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """mean and (unbiased) std from sums shifted by the first value (NaN when the input
    held a NaN/Inf; its min and max are then those `aminmax` gives)."""
    step, split, n, shift, total, squares, lo, hi, bad = row
    if bad:
        return step, split, math.nan, math.nan, lo, hi, bad / n
    mean = shift + total / n
    var = max(0.0, (squares - total * total / n) / (n - 1)) if n > 1 else 0.0
    std = math.sqrt(var) if var == var else math.nan
    return step, split, mean, std, lo, hi, bad / n


class ModuleProbe(Probe):
    name = "modules"
    writes = ("shapes", "activations", "inputs")

    def __init__(self, state: WatchState):
        super().__init__(state)
        self._signatures: dict[str, set[tuple[Any, ...]]] = {}
        self._activation_rows = _RawRows(state.tables["activations"], _activation_row)
        self._input_rows = _RawRows(state.tables["inputs"], _input_row)
        self._pending_inputs: list[tuple[tuple[Any, ...], torch.Tensor]] = []
        self._pending_activations: list[tuple[tuple[Any, ...], torch.Tensor]] = []
        self._pending_elements = 0
        # also for an instance used only for its helpers (the compiled model's boundary)
        state.deferred.before_flush(self._reduce_pending)

    def install(self) -> None:
        pres, posts = {}, {}
        for name, module in self.state.model.named_modules():
            leaf = next(module.children(), None) is None
            pres[module] = self._pre_hook(name)
            posts[module] = self._post_hook(name, leaf)
        # the shared dispatch runs these behind the guard (compiling, suspended, stopped)
        self.state.forwards.pre(self, pres)
        self.state.forwards.post(self, posts, always=True)

    def _pre_hook(self, name: str):
        state = self.state
        is_root = name == ""
        get_ident = threading.get_ident
        grad_enabled = torch.is_grad_enabled

        def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
            if is_root:
                state.threads.add(get_ident())  # loss modules of this thread are the run's
                grad = state.forward_grad = grad_enabled()
                if grad:  # the mode the next backward pass's loss was made in
                    state.forward_training = module.training
                state.call_index = 0
                state.call_stack.clear()  # a forward that raised earlier and was caught
                state.extrema.clear()
                if state.sampled:
                    self._record_input(args)
            state.call_index += 1
            state.call_stack.append((name, state.call_index))

        return pre

    def _post_hook(self, name: str, leaf: bool):
        state = self.state
        type_name = None
        seen = self._signatures.setdefault(name, set())

        def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            nonlocal type_name
            stack = state.call_stack
            call = stack.pop()[1] if stack and stack[-1][0] == name else None
            if type_name is None:
                type_name = type(module).__name__
            if output is None:
                exc = state.exception_in_flight()
                if exc is not None:
                    self._record_failure(exc, name, module, args, call, stack)
                    return
            # hot path: one plain tensor in, one out (most layers) is keyed without walking
            # the structures; a signature already seen costs one set lookup
            a = args[0] if len(args) == 1 else None
            if type(a) is Tensor and type(output) is Tensor:
                sig = (a.shape, a.dtype, output.shape, output.dtype)
                if sig in seen:
                    if leaf and state.sampled and state.split() == "train":
                        self._record_activation(name, type_name, [output])
                    return
                ins, outs = [a], [output]
            else:
                ins = tensor_leaves(args)
                outs = tensor_leaves(output)
                sig = (signature(ins), signature(outs))
            if sig not in seen and len(seen) < MAX_SIGNATURES:
                seen.add(sig)
                self._record_shapes(name, type_name, call, ins, outs)
            if leaf and state.sampled and state.split() == "train":
                self._record_activation(name, type_name, outs)

        return post

    def _record_shapes(
        self,
        name: str,
        type_name: str,
        call: int | None,
        ins: list[torch.Tensor],
        outs: list[torch.Tensor],
    ) -> None:
        state = self.state
        state.tables["shapes"].append(
            state.step,
            call,
            name,
            type_name,
            state.split(),
            json.dumps(shapes(ins)),
            json.dumps(shapes(outs)),
            json.dumps([dtype_names(ins), dtype_names(outs)]),
            nbytes(outs),
            int(ins[0].shape[0]) if ins and ins[0].dim() > 0 else None,
        )

    def _record_activation(self, name: str, type_name: str, outs: list[torch.Tensor]) -> None:
        out = first_float(outs)
        if out is None:
            return
        # detached tensors record no graph: no `no_grad()` context (~9 Python calls)
        # raw sums on the device, the divisions on the host at the flush (`_RawRows`):
        # each kernel saved is a few microseconds of the sampled step on a small model
        o = distinct(out.detach())
        state = self.state
        if o.numel() <= SMALL_ACTIVATION and o.dtype != torch.float64:
            # a small output is copied (one kernel, not five) and its statistics taken at
            # the read-back with the others of its size; the finiteness probe then sums
            # it itself (no extremes here), as it would have added them
            prefix = (state.step, name, type_name, o.numel())
            self._pending_activations.append((prefix, o.reshape(-1).to(torch.float32, copy=True)))
            self._hold(o.numel())
            return
        lo, hi = torch.aminmax(o)  # max_abs exact (aminmax allocates nothing)
        if lo.dtype != torch.float32:
            lo, hi = lo.to(torch.float32), hi.to(torch.float32)
        # the finiteness probe reads these extremes instead of summing the output again
        self.state.extrema[id(out)] = (weakref.ref(out), version(out), lo, hi)
        n = o.numel()
        if n <= SMALL_ACTIVATION:
            # two reductions that need no temporary: fewest kernels for a small output
            wide = {} if o.dtype == torch.float64 else {"dtype": torch.float32}
            nonzero = torch.linalg.vector_norm(o, 0, **wide).to(torch.float32)
            total = torch.linalg.vector_norm(o, 1, **wide).to(torch.float32)
        else:
            # on CPU the 0- and 1-norm of a large tensor are 5-20x slower than a sum;
            # a large output's zero_frac and mean_abs come from a sample of about
            # ACTIVATION_SAMPLE elements (a fraction's error ~1%: the dead-ReLU rule tells
            # ~50% from 90%+, the activation scale needs its order of magnitude): blocks of
            # SAMPLE_BLOCK neighbours spread evenly over the tensor, so the sample
            # touches a fraction of the memory (single elements at a stride would
            # touch every cache line)
            if n > 2 * ACTIVATION_SAMPLE and o.is_contiguous():
                blocks = n // SAMPLE_BLOCK
                step = max(1, blocks // (ACTIVATION_SAMPLE // SAMPLE_BLOCK))
                o = o.view(-1)[: blocks * SAMPLE_BLOCK].view(blocks, SAMPLE_BLOCK)[::step]
                n = o.numel()
            a = o.abs()
            nonzero = a.sign().sum(dtype=torch.float32)
            total = a.sum(dtype=torch.float32)
        stats = torch.stack([nonzero, total, lo, hi])
        state.deferred.add_row(self._activation_rows, (state.step, name, type_name, n), stats)

    def _record_input(self, args: tuple[Any, ...]) -> None:
        x = first_float(tensor_leaves(args))
        if x is None:
            return
        state = self.state
        # detached tensors record no graph: no `no_grad()` context (~9 Python calls)
        x = distinct(detached(x))
        row = (state.step, state.split(), x.numel())
        if x.numel() <= BATCHED_INPUT:
            # a copy (the caller may refill its batch tensor in place), reduced later
            self._pending_inputs.append((row, x.reshape(-1).to(torch.float32, copy=True)))
            self._hold(x.numel())
            return
        # only fast kernels: on CPU `std_mean` and `isfinite` take 20-40x the time of
        # a sum (32k elements, one thread). The sums are shifted by the first value,
        # so a large mean does not cancel the spread; the host divides (`_input_row`).
        # An input holding NaN/Inf gets NaN statistics (`nonfinite_frac` says how much):
        # cleaning it first would cost a pass over every input for a rare case
        xf = x if x.dtype == torch.float32 else x.to(torch.float32)
        flat = xf.reshape(-1)
        shift = flat[0]
        d = flat - shift
        lo, hi = torch.aminmax(flat)
        # x - x is NaN exactly where x is NaN or infinite
        bad = (x - x).nan_to_num_(nan=1.0).sum(dtype=torch.float32)
        stats = torch.stack([shift, d.sum(), torch.dot(d, d), lo, hi, bad])
        state.deferred.add_row(self._input_rows, row, stats)

    def _hold(self, elements: int) -> None:
        self._pending_elements += elements
        if self._pending_elements >= MAX_PENDING_ELEMENTS:
            self._reduce_pending()

    @guarded
    def _reduce_pending(self) -> None:
        """The statistics of the small inputs and outputs copied since the last read-back,
        those of one size and device stacked: the same sums as `_record_input` and
        `_record_activation` take, per row."""
        inputs, self._pending_inputs = self._pending_inputs, []
        outputs, self._pending_activations = self._pending_activations, []
        self._pending_elements = 0
        add = self.state.deferred.add
        for prefixes, xs in _stacked(inputs):
            shift = xs[:, :1]
            d = xs - shift
            # amin and amax: `aminmax(dim=1)` is ~10x slower than the two on a CPU
            lo, hi = xs.amin(1), xs.amax(1)
            bad = (xs - xs).nan_to_num_(nan=1.0).sum(1)
            stats = torch.stack([shift[:, 0], d.sum(1), (d * d).sum(1), lo, hi, bad], dim=1)
            add(self._input_rows, prefixes, stats)
        for prefixes, xs in _stacked(outputs):
            # nonzero count as the 0-norm counts it (NaN counts), |x| summed, extremes
            nonzero = (xs != 0).sum(1, dtype=torch.float32)
            stats = torch.stack([nonzero, xs.abs().sum(1), xs.amin(1), xs.amax(1)], dim=1)
            add(self._activation_rows, prefixes, stats)

    def _record_failure(
        self,
        exc: BaseException,
        name: str,
        module: nn.Module,
        args: tuple[Any, ...],
        call: int | None,
        stack: list[tuple[str, int]],
    ) -> None:
        """The innermost module sees the exception first; outer modules keep its record."""
        if self.state.failure is not None and self.state.failure.exc_id == id(exc):
            return  # cheap early out: the outer modules of a raising call see it again
        path = [n for n, _ in stack] + [name]
        if not stack:
            # the model's own call sees it first: it raised in the model's own code, or in
            # a module the dispatch let run without hooks (a quiet call): the traceback
            # says which
            calls = module_calls(exc, self.state.module_names)
            if calls and calls[-1][1] is not module:
                name, module, args = calls[-1]
                path, call = [n for n, _, _ in calls], None
        ins = tensor_leaves(args)
        self.state.record_failure(
            exc, "forward", name, type(module).__name__, ins, path, call, int_range(ins)
        )


def _stacked(
    pending: list[tuple[tuple[Any, ...], torch.Tensor]],
) -> Iterator[tuple[list[tuple[Any, ...]], torch.Tensor]]:
    """(prefixes, [rows, elements]) blocks of the copies of one device and size, each small
    enough to stay in the cache through the passes over it: one stack of many steps'
    copies makes every pass a trip to memory (3x slower per row on a CPU)."""
    groups: dict[tuple[Any, int], list[int]] = {}
    for i, (_, flat) in enumerate(pending):
        groups.setdefault((flat.device, flat.numel()), []).append(i)
    for (_, numel), idx in groups.items():
        rows = max(1, STACKED_ELEMENTS // numel)
        for start in range(0, len(idx), rows):
            block = idx[start : start + rows]
            xs = torch.stack([pending[i][1] for i in block])
            yield [pending[i][0] for i in block], xs
