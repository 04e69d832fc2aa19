"""Per-step cost of trainlens.watch against a plain loop and against the hook floor,
in both phases of a run: its first 100 steps and the steady state.

    python benchmarks/overhead.py            # all workloads, prints a table, writes JSON
    python benchmarks/overhead.py --quick    # fewer repetitions
    python benchmarks/overhead.py --only mlp tiny --clock wall

Modes run the same training step, interleaved within one process (the order rotates
every repetition) so machine noise hits all of them alike:

- `plain`: no hooks;
- `floor`: a no-op forward pre- and post-hook on every module and a no-op optimizer step
  hook: what any hook-based tool pays at least;
- `watch`: trainlens with its defaults (`sample_every=20`), in steady state;
- `dense`: trainlens in a run's first 100 steps, with its defaults: the step count
  goes back to 0 every 100 steps, and every chunk times 100 steps, so each one is steps
  0-99 of a default run with its sampling schedule (every step of the first 10, then
  thinning out; see `Sampling`). The first-batch checks, once a run, are left out as in
  `watch`.

A `watch` chunk is a whole number of sampling periods (20 steps), a `dense` chunk the
whole window: every chunk of a mode has the same mix of sampled and unsampled steps
(`chunk_lengths`), so the ratios of one repetition and the next measure the same thing.

Both phases are checked against their own target (`WORKLOADS`); the table prints the
hook floor beside them.

A watched run samples every step of its first 10, then ever fewer, down to one in
`sample_every` from step 160. To time the steady state without paying the first steps
per repetition (the transformer takes a second a step on a busy machine), each `watch`
chunk enters `trainlens.watch` with its defaults and continues the step count where the
workload's previous `watch` chunk left it, starting at step 160: the chunks together are
steps 160, 161, ... of one default run, with its sampled steps (one in 20) and read-
backs (one in 50) where that run has them, whatever a chunk's length. A new block has
none of the state a run has built by step 160 (its calls seen, its shape trace, the loss
inputs' warm-up), so before each timed chunk it takes, untimed, the 30 sampled steps a
default run has taken by then (`_Watch.warm`): a run pays those costs once, in its first
steps, which the `dense` chunks time. The warm-up ends with the records' write to the run
dir that a running run makes every 10 s, so that write (tens of ms) does not land in a
chunk that times a few seconds at most. Leaving a block
(rules, drill) is not timed: it happens once per run, not per step (see
benchmarks/memory.py).

Per mode and repetition both wall time and process CPU time are taken. With one thread
(`torch.set_num_threads(1)`, as the targets are stated) CPU time is the work the step
did; wall time adds whatever the other processes on a shared machine took from the core.
Ratios are taken per repetition between neighbouring chunks and their median is
reported with its min..max; `--clock` picks which clock the targets are checked on
(default cpu; on a quiet machine the two agree).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import trainlens
from trainlens._probes._state import Sampling

Step = Callable[[], None]


def _workload(
    name: str, device: torch.device | str = "cpu"
) -> tuple[nn.Module, torch.optim.Optimizer, Step]:
    """The model, its optimizer and one training step; `cuda_sync.py` runs them on a GPU."""
    torch.manual_seed(0)
    if name == "tiny":
        model = nn.Linear(10, 1)
        x, y = torch.randn(32, 10), torch.randn(32, 1)
        loss_fn: nn.Module = nn.MSELoss()
    elif name == "mlp":
        model = nn.Sequential(
            nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
        )
        x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))
        loss_fn = nn.CrossEntropyLoss()
    elif name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 8 * 8, 10),
        )  # fmt: skip
        x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
        loss_fn = nn.CrossEntropyLoss()
    elif name == "transformer":
        layer = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.1, batch_first=True)
        encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        model = nn.Sequential(encoder, nn.Linear(256, 10))
        x, y = torch.randn(8, 128, 256), torch.randint(0, 10, (8, 128))
        ce = nn.CrossEntropyLoss()

        class SeqLoss(nn.Module):
            def forward(self, out, target):
                return ce(out.reshape(-1, 10), target.reshape(-1))

        loss_fn = SeqLoss()
    elif name == "lstm":

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = nn.LSTM(64, 256, num_layers=2, batch_first=True)
                self.head = nn.Linear(256, 10)

            def forward(self, seq):
                return self.head(self.rnn(seq)[0][:, -1])

        model = Net()
        x, y = torch.randn(16, 64, 64), torch.randint(0, 10, (16,))
        loss_fn = nn.CrossEntropyLoss()
    else:
        raise ValueError(name)
    model.to(device)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return model, opt, step


class _Floor:
    """No-op hooks where trainlens puts its own: the cost of hooking at all."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer):
        self.model, self.opt = model, opt

    def __enter__(self) -> None:
        def noop(*args):
            return None

        model = self.model
        self.handles = [m.register_forward_pre_hook(noop) for m in model.modules()]
        self.handles += [m.register_forward_hook(noop) for m in model.modules()]
        self.handles.append(self.opt.register_step_pre_hook(noop))
        self.handles.append(self.opt.register_step_post_hook(noop))

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


class _Plain:
    def __init__(self, *args) -> None:
        pass

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc) -> None:
        pass


class _Watch:
    """`trainlens.watch` with defaults, at steps `next_step[0]`, ... of a long run."""

    counter = 0

    def __init__(
        self,
        model,
        opt,
        tmp: Path,
        sampling: Sampling,
        next_step: list[int],
        wrap: int | None = None,
    ):
        self.model, self.opt, self.tmp = model, opt, tmp
        self.sampling, self.next_step, self.wrap = sampling, next_step, wrap

    def steps(self, step: Step) -> Step:
        """`step`, with the run's step count going back to 0 every `wrap` steps."""
        if self.wrap is None:
            return step
        state, wrap = self.state, self.wrap

        def wrapped() -> None:
            if state.step >= wrap:
                state.step = 0
                state.sampled = True
            step()

        return wrapped

    def __enter__(self) -> _Watch:
        _Watch.counter += 1
        run_dir = self.tmp / f"run-{_Watch.counter}"
        self.lens = trainlens.watch(self.model, self.opt, run_dir=run_dir, quiet=True)
        self.lens.__enter__()
        state = self.state = self.lens._state
        state.sampling = self.sampling
        state.step = self.next_step[0]
        state.sampled = state.sampling(state.step)
        # the first-batch checks (batch dependency, initial loss) run once a run, not once
        # a step: a chunk is a new run, so they are taken out of the steady state here
        for probe in self.lens._probes:
            if getattr(probe, "once", False):
                probe.retire()
        return self

    def warm(self, step: Step) -> None:
        """Bring the probes' per-run state to where a default run has it at step 160, untimed:
        as many sampled steps as that run had before (30), then a read-back. A fresh block
        pays once what a run pays once (its first calls dispatched in full, the shape trace,
        the loss inputs' warm-up: 16 prior updates and batch-axis looks); a steady-state
        chunk that paid it again would charge a run's start to its steady state."""
        state = self.state
        at, schedule = state.step, state.sampling
        state.sampling, state.sampled = Sampling(every=1, dense_steps=0), True
        for _ in range(sum(map(schedule, range(STEADY_FROM)))):
            step()
        state.sampling, state.step = schedule, at
        state.sampled = schedule(at)
        state.deferred.flush()
        if state.on_stream is not None:
            # the records go to the run dir every 10 s (`_stream`): written here, as a
            # running run last wrote them, not in the first timed step of a short chunk
            state.on_stream(time.perf_counter() - state.t0)

    def __exit__(self, *exc) -> None:
        self.next_step[0] = self.state.step
        self.lens.__exit__(None, None, None)


MODES = ("plain", "floor", "watch", "dense")
#: where a default run's sampling has thinned out to one step in `sample_every`
STEADY_FROM = 160


def _chunk(step: Step, n: int) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n


#: the steps a dense chunk times: a whole first-100 window, steps 0-99
DENSE_WINDOW = 100


def chunk_lengths(steps: int) -> dict[str, int]:
    """Steps each mode times per chunk: `steps` for the loops without trainlens, whole
    periods of the sampling schedule for the watched ones, so every chunk has the same
    mix of sampled and unsampled steps. A steady-state chunk of 10 steps has a sampled
    step every other repetition, and the median of such ratios flips between the two;
    dense chunks shorter than the window would time its first steps (all sampled) in
    one repetition and its last (one in 16) in another, and their median is no run's
    first 100 steps."""
    every = Sampling().every
    watch = -(-steps // every) * every
    return {"plain": steps, "floor": steps, "watch": watch, "dense": DENSE_WINDOW}


def measure(name: str, steps: int, reps: int, tmp: Path) -> dict:
    model, opt, step = _workload(name)
    watch_steps, first_steps = [STEADY_FROM], [0]
    for _ in range(max(20, steps)):
        step()  # warm-up: allocator, kernels, lazy init
    contexts = {
        "plain": lambda: _Plain(),
        "floor": lambda: _Floor(model, opt),
        # steady state: step 160 onwards of a default run; dense: its steps 0-99
        "watch": lambda: _Watch(model, opt, tmp, Sampling(), watch_steps),
        "dense": lambda: _Watch(model, opt, tmp, Sampling(), first_steps, wrap=DENSE_WINDOW),
    }
    lengths = chunk_lengths(steps)
    for mode in MODES:  # one untimed chunk each: first-call costs out of the way
        with contexts[mode]() as ctx:
            _chunk(ctx.steps(step) if ctx else step, min(steps, 10))
    times: dict[str, dict[str, list[float]]] = {m: {"wall": [], "cpu": []} for m in MODES}
    for rep in range(reps):
        order = MODES[rep % len(MODES) :] + MODES[: rep % len(MODES)]
        for mode in order:
            with contexts[mode]() as ctx:
                if mode == "watch":
                    ctx.warm(step)
                wall, cpu = _chunk(ctx.steps(step) if ctx else step, lengths[mode])
            times[mode]["wall"].append(wall)
            times[mode]["cpu"].append(cpu)
    out: dict = {"steps_per_chunk": lengths, "reps": reps}
    for clock in ("wall", "cpu"):
        for mode in MODES:
            v = times[mode][clock]
            out[f"{mode}_ms_{clock}"] = statistics.median(v) * 1e3
            out[f"{mode}_spread_{clock}"] = (max(v) - min(v)) / statistics.median(v)
        for a, b in (
            ("watch", "plain"),
            ("watch", "floor"),
            ("floor", "plain"),
            ("dense", "plain"),
        ):
            r = [x / y for x, y in zip(times[a][clock], times[b][clock], strict=True)]
            out[f"{a}/{b}_{clock}"] = statistics.median(r)
            out[f"{a}/{b}_{clock}_range"] = [min(r), max(r)]
    return out


#: workload -> (steps per chunk of the plain loop; target for watch/plain (steady state);
#: target for dense/plain (the first 100 steps))
WORKLOADS = {
    "tiny": (500, 1.25, 1.8),
    "mlp": (100, 1.08, 1.20),
    "cnn": (20, 1.03, 1.10),
    "transformer": (10, 1.03, 1.10),
    "lstm": (10, 1.03, 1.10),
}


def _conditions(reps: int, clock: str) -> dict:
    return {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "reps": reps,
        "clock": clock,
        "trainlens_defaults": dataclasses.asdict(Sampling()),
    }


def _cell(r: dict, ratio: str, goal: float, ok: bool) -> str:
    lo, hi = r[f"{ratio}_range"]
    mark = "ok" if ok else "MISSED"
    return f"{r[ratio]:6.3f} [{lo:.2f}..{hi:.2f}] <={goal:<4} {mark:6s}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 7)")
    parser.add_argument("--only", nargs="*", choices=list(WORKLOADS), help="some workloads")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--json", default="benchmarks/overhead.json", help="where to write")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reps = args.reps or (3 if args.quick else 7)
    c = args.clock
    results: dict = {"conditions": _conditions(reps, c), "workloads": {}}
    print(
        f"{'workload':12s} {'plain ms':>9s} {'floor/plain':>12s} "
        f"{'first 100 steps/plain':>29s} {'steady/plain':>22s}   ({c} time)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or WORKLOADS:
            steps, target, dense_target = WORKLOADS[name]
            r = measure(name, steps, reps, Path(tmp))
            r["target"], r["dense_target"] = target, dense_target
            r["meets_steady_target"] = r[f"watch/plain_{c}"] <= target
            r["meets_dense_target"] = r[f"dense/plain_{c}"] <= dense_target
            r["meets_target"] = r["meets_steady_target"] and r["meets_dense_target"]
            results["workloads"][name] = r

            print(
                f"{name:12s} {r[f'plain_ms_{c}']:9.3f} {r[f'floor/plain_{c}']:12.3f} "
                f"{_cell(r, f'dense/plain_{c}', dense_target, r['meets_dense_target'])} "
                f"{_cell(r, f'watch/plain_{c}', target, r['meets_steady_target'])}",
                flush=True,
            )
    results["conditions"]["loadavg_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if all(r["meets_target"] for r in results["workloads"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
