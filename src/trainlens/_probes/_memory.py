"""Memory: a per-step memory curve, graphs kept alive across steps, the state at an OOM.

Per sampled step (at the first training forward of the step) one row of the `memory` table: the
process's memory (CUDA: `torch.cuda.memory_allocated`, a host-side counter that needs no
synchronisation; CPU: the C heap's bytes in use from glibc's `mallinfo2`, or the
resident set size where that is missing or slow) and how many autograd
graphs of earlier steps are still alive.

Graph liveness: the model's outputs of each step carry a tiny sentinel object in their
nodes' `grad_fn.metadata` dict (owned by the autograd node, never read by autograd) and the
probe keeps only a weak reference to it. The sentinel dies with the node. In a healthy
loop the node dies once the step's tensors are dropped; when a loop keeps the graph
(`total_loss += loss`, a list of losses, a hidden state carried into the next step) the
sentinels of old steps stay alive. No hook runs in backward; at most `MAX_TRACKED`
sentinels are tracked at a time. The inert sentinels stay on the nodes the user's loop
keeps alive after the block (a few bytes each, no behaviour).

At the end (`finish`) the probe reads what memory was available and, when the block
raised an out-of-memory error, what is needed to explain it: whether it struck in the
backward pass (and which modules had received gradients by then), and the outputs of
the failing module estimated on the meta device (shapes only, no memory).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import re
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch

from ._base import Probe
from ._state import WatchState, suspended
from ._tensors import tensor_leaves

#: sentinels of older steps tracked at once; past it the count saturates (a leak is a leak)
MAX_TRACKED = 64
#: outputs of one forward that get the step's sentinel (a model returning many: the first)
MAX_OUTPUTS = 4

_OOM = re.compile(r"out of memory|can't allocate memory|cannot allocate memory", re.I)
_ENGINE_CALLS = ("backward", "grad", "_engine_run_backward")
#: what autograd raises for a backward pass through saved tensors an earlier one freed
_FREED = re.compile(r"backward through the graph a second time", re.I)
#: autograd nodes walked from the failing backward's roots to find older steps' sentinels
MAX_WALK = 20_000
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _Sentinel:
    __slots__ = ("__weakref__", "step")

    def __init__(self, step: int):
        self.step = step


# --- memory readers (module level so a test can inject recorded numbers) ----------------
def cpu_rss() -> int | None:
    """Resident set size of this process, in bytes: one small read of /proc/self/statm."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


_MALLINFO_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO_FIELDS.split()]


def _load_mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        fn = ctypes.CDLL(None).mallinfo2  # glibc >= 2.33
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _load_mallinfo2()


def cpu_heap() -> int | None:
    """Bytes the C heap has handed out and not got back (glibc `mallinfo2`).

    Unlike RSS it is exact: freed memory the heap keeps for reuse does not hide growth.
    It walks every free chunk of every arena: 3 us on a fresh process, 10 ms on a
    fragmented heap (`_HeapReader` stops calling it there).
    """
    info = _MALLINFO2()  # type: ignore[misc]
    return int(info.uordblks + info.hblkhd)


#: a heap reading slower than this: the heap is fragmented, the run reads RSS from then on
#: (one reading per sampled step: 27 in a run's first 100 steps, then one in 20)
SLOW_HEAP_READ_S = 0.00025
#: ... or slower than this share of the run's step: on a model whose step takes 150 us a
#: fragmented heap's 30-40 us reading would be a quarter of each sampled step, for a curve
#: that RSS draws too (in steps of pages)
HEAP_READ_SHARE = 0.05


class _HeapReader:
    """The per-step CPU reading: the heap in use while reading it stays cheap, then RSS.

    `kind` says what the next reading is. RSS comes from /proc/<pid>/statm kept open
    (one `pread`, ~1 us, whatever the heap holds).
    """

    def __init__(self) -> None:
        self.kind = "cpu_heap" if _MALLINFO2 is not None else "cpu_rss"
        #: seconds a training step takes, as the probe last measured it (None: not yet)
        self.step_s: float | None = None
        self._slow = 0  # slow heap readings in a row
        self._clock = time.perf_counter
        self._fd: int | None = None
        self._pid = -1

    def __call__(self) -> int | None:
        if self.kind == "cpu_heap":
            t0 = self._clock()
            value = cpu_heap()
            took = self._clock() - t0
            limit = SLOW_HEAP_READ_S
            if self.step_s is not None:
                limit = min(limit, HEAP_READ_SHARE * self.step_s)
            # two in a row: a fragmented heap is slow every time, a reading the scheduler
            # interrupted is slow once
            self._slow = self._slow + 1 if took > limit else 0
            if self._slow >= 2:
                self.kind = "cpu_rss"
            return value
        pid = os.getpid()
        try:
            if pid != self._pid:  # the first reading, or in a forked child: its own file
                self.close()
                self._fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
                self._pid = pid
            return int(os.pread(self._fd, 256, 0).split()[1]) * _PAGE  # type: ignore[arg-type]
        except (OSError, ValueError, IndexError, AttributeError):  # no /proc, no pread
            return None

    def close(self) -> None:
        fd, self._fd, self._pid = self._fd, None, -1
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def cpu_snapshot() -> dict[str, Any]:
    """What a CPU process may still allocate: MemAvailable, capped by a cgroup limit."""
    info: dict[str, Any] = {"kind": "cpu", "process_rss_bytes": cpu_rss()}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = {line.split(":")[0]: line.split()[1] for line in f if ":" in line}
        info["total_bytes"] = int(fields["MemTotal"]) * 1024
        info["available_bytes"] = int(fields["MemAvailable"]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        pass
    limit = _cgroup_room()
    if limit is not None:
        info["cgroup_room_bytes"] = limit
        if info.get("available_bytes") is None or limit < info["available_bytes"]:
            info["available_bytes"] = limit
    return info


def _cgroup_room() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            raw = f.read().strip()
        if raw == "max":
            return None
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            return max(0, int(raw) - int(f.read().strip()))
    except (OSError, ValueError):
        return None


def cuda_snapshot(device: torch.device) -> dict[str, Any]:
    """Free and total device memory and the caching allocator's own counters."""
    free, total = torch.cuda.mem_get_info(device)
    stats = torch.cuda.memory_stats(device)
    allocated = int(stats.get("allocated_bytes.all.current", 0))
    reserved = int(stats.get("reserved_bytes.all.current", 0))
    return {
        "kind": "cuda",
        "device": str(device),
        "total_bytes": int(total),
        "free_bytes": int(free),
        "allocated_bytes": allocated,
        "reserved_bytes": reserved,
        "peak_allocated_bytes": int(stats.get("allocated_bytes.all.peak", 0)),
        # cached blocks the allocator can hand out again count as available
        "available_bytes": int(free) + max(0, reserved - allocated),
        "process_rss_bytes": cpu_rss(),
    }


def snapshot(device: torch.device) -> dict[str, Any]:
    return cuda_snapshot(device) if device.type == "cuda" else cpu_snapshot()


def step_reader(device: torch.device) -> tuple[str, Callable[[], int | None]]:
    """The cheap per-step reading for a device: (kind, reader)."""
    if device.type == "cuda":
        return "cuda_allocated", lambda: torch.cuda.memory_allocated(device)
    reader = _HeapReader()
    return reader.kind, reader


class MemoryProbe(Probe):
    name = "memory"
    writes = ("memory",)

    def __init__(self, state: WatchState):
        super().__init__(state)
        self.device = torch.device("cpu")
        self._kind, self._read = step_reader(self.device)
        self._tracked: list[tuple[int, weakref.ref[_Sentinel]]] = []
        self._row_step = -1
        self._marked_step = -1
        self._model_input: tuple[torch.Size, torch.dtype] | None = None
        self._paced: tuple[int, float] | None = None  # (step, clock) of the last reading

    def install(self) -> None:
        model = self.state.model
        param = next((p for p in model.parameters() if p.device.type != "meta"), None)
        if param is not None:
            self.device = param.device
        self._kind, self._read = step_reader(self.device)
        # through the run's shared dispatch, on sampled steps only: nothing runs otherwise
        self.state.forwards.pre(self, {model: self._pre}, sampled=True)
        self.state.forwards.post(self, {model: self._post}, sampled=True)

    # --- per step (behind the dispatch's guard) ---------------------------------------
    def _pre(self, module: Any, args: tuple[Any, ...]) -> None:
        state = self.state
        # sampled steps only (`Sampling`: every step at first, then thinning out): a
        # leak shows as a trend, and reading the heap costs 3-20 us (more on a fragmented
        # heap: see `_HeapReader`)
        if not state.sampled or state.step == self._row_step:
            return
        if state.split() != "train":
            return
        self._row_step = state.step
        ins = tensor_leaves(args)
        if ins:  # the last one seen, described at the end
            self._model_input = (ins[0].shape, ins[0].dtype)
        alive = [(s, r) for s, r in self._tracked if r() is not None]
        self._tracked = alive
        read = self._read
        if type(read) is _HeapReader:  # what a reading may cost depends on the step's time
            now = time.perf_counter()
            if self._paced is not None and state.step > self._paced[0]:
                read.step_s = (now - self._paced[1]) / (state.step - self._paced[0])
            self._paced = (state.step, now)
        kind = getattr(read, "kind", self._kind)  # a reader may change what it reads
        state.tables["memory"].append(
            state.step, read(), kind, len(alive), alive[0][0] if alive else None
        )

    def _post(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        state = self.state
        if not state.sampled or state.step == self._marked_step:
            return
        if output is None:
            return
        if state.split() != "train" or len(self._tracked) >= MAX_TRACKED:
            return
        self._marked_step = state.step
        # one sentinel shared by the step's outputs: it lives while any of their graphs
        # does (a loss's, or a hidden state's carried into the next step)
        sentinel = _Sentinel(state.step)
        marked = False
        for t in tensor_leaves(output)[:MAX_OUTPUTS]:
            node = t.grad_fn
            if node is None:
                continue
            try:
                node.metadata["trainlens"] = sentinel
            except (AttributeError, RuntimeError, TypeError):  # pragma: no cover - old torch
                return
            marked = True
        if marked:
            self._tracked.append((state.step, weakref.ref(sentinel)))

    # --- the end of the run ------------------------------------------------------------
    def finish(self, exc: BaseException | None) -> None:
        close = getattr(self._read, "close", None)
        if close is not None:
            close()
        try:
            info = snapshot(self.device)
        except Exception as err:  # a broken driver must not cost the user the drill
            info = {"kind": self.device.type, "error": f"{type(err).__name__}: {err}"}
        shape_dtype = self._model_input
        info["model_input"] = (
            None
            if shape_dtype is None
            else {
                "shape": list(shape_dtype[0]),
                "dtype": str(shape_dtype[1]).removeprefix("torch."),
            }
        )
        if exc is not None and _is_oom(exc):
            info["oom"] = self._oom_facts(exc)
        elif exc is not None and _FREED.search(str(exc)) and raised_in_backward(exc):
            info["freed_graph"] = freed_graph_facts(exc, self.state.step)
        self.state.extra_meta["memory"] = info

    def _oom_facts(self, exc: BaseException) -> dict[str, Any]:
        state = self.state
        facts: dict[str, Any] = {"in_backward": raised_in_backward(exc)}
        if facts["in_backward"]:
            # which modules' parameters had a gradient when backward stopped: backward runs
            # in reverse forward order, so the failing module sits just before them
            has: dict[str, bool] = {}
            for name, p in state.model.named_parameters():
                if p.requires_grad:
                    mod = name.rpartition(".")[0]
                    has[mod] = has.get(mod, True) and p.grad is not None
            facts["grad_arrived"] = has
        failure = state.failure
        if failure is not None and failure.exc_id == id(exc) and failure.phase == "forward":
            facts["estimate"] = _meta_outputs(state, failure.module, failure.inputs, failure.dtypes)
        return facts


def freed_graph_facts(exc: BaseException, step: int) -> dict[str, Any]:
    """A backward pass that ran into a graph an earlier one freed: the steps whose model
    outputs (their sentinels) the failing pass's graph reaches. A step before `step` means
    this step's loss reaches back into an earlier step's graph (a hidden state carried
    without `.detach()`, a loss computed once and reused)."""
    roots = _backward_roots(exc)
    steps: set[int] = set()
    seen: set[int] = set()
    todo = [t.grad_fn if isinstance(t, torch.Tensor) else getattr(t, "node", None) for t in roots]
    keep = []  # the nodes walked stay referenced, so no id is reused during the walk
    while todo and len(seen) < MAX_WALK:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        keep.append(node)
        try:
            sentinel = node.metadata.get("trainlens")
            nexts = node.next_functions
        except Exception:  # a node type without metadata (custom C++ functions)
            continue
        if isinstance(sentinel, _Sentinel):
            steps.add(sentinel.step)
        todo.extend(n for n, _ in nexts)
    return {
        "step": step,
        "graph_steps": sorted(steps),
        "roots": len(roots),
        "nodes_walked": len(seen),
        "complete": not todo,
    }


def _backward_roots(exc: BaseException) -> list[Any]:
    """The tensors the failing `backward()` / `autograd.grad()` started from, read from the
    autograd engine call's frame in the traceback (kept alive by the exception)."""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code
        path = code.co_filename.replace("\\", "/")
        if code.co_name == "_engine_run_backward" and "/torch/autograd/" in path:
            roots = frame.f_locals.get("t_outputs")
            if isinstance(roots, (tuple, list)):
                return list(roots)
        tb = tb.tb_next
    return []


def _is_oom(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(exc, oom_type)) or bool(_OOM.search(str(exc)))


def raised_in_backward(exc: BaseException) -> bool:
    """The traceback passes through torch.autograd's engine call (`loss.backward()`)."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        path = code.co_filename.replace("\\", "/")
        if "/torch/autograd/" in path and code.co_name in _ENGINE_CALLS:
            return True
        tb = tb.tb_next
    return False


def _meta_outputs(
    state: WatchState, name: str | None, inputs: list[list[int]], dtypes: list[str]
) -> dict[str, Any] | None:
    """Run the failing module on meta tensors: its output shapes at no memory cost."""
    if name is None or not inputs:
        return None
    try:
        module = state.model.get_submodule(name)
        args = [
            torch.empty(shape, dtype=getattr(torch, dt), device="meta")
            for shape, dt in zip(inputs, dtypes, strict=True)
        ]
        fake = {
            n: torch.empty_like(t, device="meta")
            for n, t in [*module.named_parameters(), *module.named_buffers()]
        }
        with suspended(), torch.random.fork_rng(devices=[]), torch.no_grad():
            out = torch.func.functional_call(module, fake, tuple(args))
        outs = tensor_leaves(out)
    except Exception:  # a module that needs real values or other arguments: no estimate
        return None
    if not outs:
        return None
    return {
        "module": name,
        "outputs": [list(t.shape) for t in outs],
        "output_bytes": sum(math.prod(t.shape) * t.element_size() for t in outs),
        "batch": inputs[0][0] if inputs[0] else None,
    }
