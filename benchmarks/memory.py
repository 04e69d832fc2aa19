"""Memory and end-of-run cost of a long watched run: 100 000 steps of a small MLP.

    python benchmarks/memory.py                 # 100 000 steps, prints the figures
    python benchmarks/memory.py --steps 20000   # shorter
    python benchmarks/memory.py --exit-memory   # what the block exit adds and keeps
    python benchmarks/memory.py --sigkill       # how much of a run survives SIGKILL

Targets (exit status 1 when one is missed): resident memory growth after warm-up
<= 64 MB, every record table within its bound (`_records.THINNING`), run dir <= 50 MB,
drill written <= 5 s after the block ends. The loop is an ordinary one: cycling over a
few fixed batches, a validation loss every 1000 steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import trainlens
from trainlens._records import DEFAULT_THINNING, THINNING

WARMUP_STEPS = 2_000  # past the dense phase (100 steps) and the allocator's first growth
TARGETS = {"rss_growth_mb": 64.0, "run_dir_mb": 50.0, "drill_s": 5.0}


def _train_step(model, opt, loss_fn, batches, val, step: int) -> None:
    """One training step of the benchmark loop; every 1000th is followed by a validation
    forward (the loop's only `eval()` call)."""
    x, y = batches[step % len(batches)]
    loss = loss_fn(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 1000 == 999:
        model.eval()
        with torch.no_grad():
            loss_fn(model(val[0]), val[1])
        model.train()


def rss_mb() -> float:
    """Current resident set size (Linux /proc; elsewhere the peak, which over-states)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--json", default="benchmarks/memory.json", help="where to write")
    parser.add_argument(
        "--exit-memory",
        action="store_true",
        help="only measure the memory the block exit adds and does not give back "
        "(default 50 000 steps; writes benchmarks/memory_exit.json)",
    )
    args = parser.parse_args()
    if args.exit_memory:
        steps = args.steps if "--steps" in sys.argv else EXIT_STEPS
        json_path = args.json if "--json" in sys.argv else "benchmarks/memory_exit.json"
        return exit_memory(steps, json_path)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    batches = [(torch.randn(32, 32), torch.randint(0, 10, (32,))) for _ in range(16)]
    xv, yv = torch.randn(64, 32), torch.randint(0, 10, (64,))
    trace: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        t_start = time.perf_counter()
        lens = trainlens.watch(model, opt, run_dir=run_dir, quiet=True)
        with lens:
            for step in range(args.steps):
                _train_step(model, opt, loss_fn, batches, (xv, yv), step)
                if step + 1 == WARMUP_STEPS or (step + 1) % 10_000 == 0:
                    trace.append((step + 1, rss_mb()))
            t_loop_end = time.perf_counter()
            state = lens._state
            rows = {name: len(t) for name, t in state.tables.items()}
            seen = {name: t.seen for name, t in state.tables.items()}
            rss_end = rss_mb()
        t_exit = time.perf_counter()
        run_mb = dir_mb(run_dir)
        drill_ok = (run_dir / "drill.json").is_file()
        status = lens.drill["status"] if lens.drill else None

    warm = next(mb for s, mb in trace if s >= min(WARMUP_STEPS, args.steps))
    bounds = {}
    for name in rows:
        policy = THINNING.get(name, DEFAULT_THINNING)
        bounds[name] = policy.max_rows if policy is not None else None
    within = all(b is None or rows[n] <= b for n, b in bounds.items())
    figures = {
        "steps": args.steps,
        "loop_s": round(t_loop_end - t_start, 2),
        "ms_per_step": round((t_loop_end - t_start) / args.steps * 1e3, 3),
        "rss_warm_mb": round(warm, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - warm, 1),
        "rss_trace_mb": [(s, round(mb, 1)) for s, mb in trace],
        "rows_kept": rows,
        "rows_seen": seen,
        "rows_bound": bounds,
        "records_bounded": within,
        "run_dir_mb": round(run_mb, 2),
        "drill_s": round(t_exit - t_loop_end, 2),
        "drill_written": drill_ok,
        "status": status,
    }
    checks = {
        "rss_growth_mb": figures["rss_growth_mb"] <= TARGETS["rss_growth_mb"],
        "records_bounded": within,
        "run_dir_mb": figures["run_dir_mb"] <= TARGETS["run_dir_mb"],
        "drill_s": figures["drill_s"] <= TARGETS["drill_s"] and drill_ok,
    }
    figures["targets"] = TARGETS
    figures["met"] = checks
    print(
        f"{args.steps} steps of a small MLP under trainlens.watch "
        f"({figures['ms_per_step']} ms/step)"
    )
    print(
        f"  RSS after {WARMUP_STEPS} steps {warm:.1f} MB, at the end {rss_end:.1f} MB: "
        f"growth {figures['rss_growth_mb']} MB (target <= 64)  "
        f"{'ok' if checks['rss_growth_mb'] else 'MISSED'}"
    )
    print(f"  RSS every 10k steps: {figures['rss_trace_mb']}")
    for name in rows:
        b = bounds[name]
        print(f"  table {name:12s} {seen[name]:8d} rows seen, {rows[name]:6d} kept (bound {b})")
    print(f"  run dir {run_mb:.2f} MB (target <= 50)  {'ok' if checks['run_dir_mb'] else 'MISSED'}")
    print(
        f"  drill written {figures['drill_s']} s after the block (target <= 5)  "
        f"{'ok' if checks['drill_s'] else 'MISSED'}; status {status}"
    )
    Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if all(checks.values()) else 1


# --- the block exit: what it adds and what it keeps (issue 20) -------------------------------
EXIT_STEPS = 50_000
EXIT_TARGET_MB = 16.0  # what the block exit adds to RSS and keeps (58 MB before issue 20)


def _mlp_run(steps: int, run_dir: Path) -> tuple[trainlens.Lens, float, float]:
    """A watched MLP run; RSS (MB) just before entering and at the end of the loop."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    batches = [(torch.randn(32, 32), torch.randint(0, 10, (32,))) for _ in range(16)]
    xv, yv = torch.randn(64, 32), torch.randint(0, 10, (64,))
    before = rss_mb()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for step in range(steps):
            _train_step(model, opt, loss_fn, batches, (xv, yv), step)
        loop_end = rss_mb()
    return lens, before, loop_end


def _malloc_trim_mb() -> float | None:
    """How much freed heap glibc hands back when asked (diagnostic only: trainlens does
    not call it; the process reuses that heap for its next allocations)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return None
    before = rss_mb()
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        return None
    return before - rss_mb()


def exit_memory(steps: int, json_path: str) -> int:
    """RSS before entering the block, at the end of the loop and after the block.

    A 100-step watched run goes first: the first block exit in a process imports what
    writing a run needs (matplotlib, pyarrow's parquet writer), a one-time cost reported
    on its own. Exit 1 when the exit of the measured run adds more than EXIT_TARGET_MB.
    What the run itself recorded while it went (bounded by the tables' limits) is part of
    "kept", beside the records `lens` hands the user.
    """
    import gc

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        first, first_before, _ = _mlp_run(100, Path(tmp) / "first")
        first_after = rss_mb()
        del first
        lens, before, loop_end = _mlp_run(steps, Path(tmp) / "run")
        after = rss_mb()
        gc.collect()
        after_gc = rss_mb()
        assert lens.records is not None
        records_mb = (
            sum(f.memory_usage(deep=True).sum() for f in lens.records.frames.values()) / 2**20
        )
        trimmed = _malloc_trim_mb()
    kept = after - before
    figures = {
        "steps": steps,
        "first_exit_mb": round(first_after - first_before, 1),
        "rss_before_mb": round(before, 1),
        "rss_loop_end_mb": round(loop_end, 1),
        "rss_after_mb": round(after, 1),
        "rss_after_gc_mb": round(after_gc, 1),
        "exit_adds_mb": round(after - loop_end, 1),
        "kept_mb": round(kept, 1),
        "records_mb": round(records_mb, 1),
        "kept_beyond_records_mb": round(kept - records_mb, 1),
        "malloc_trim_would_return_mb": None if trimmed is None else round(trimmed, 1),
        "target_mb": EXIT_TARGET_MB,
    }
    ok = figures["exit_adds_mb"] <= EXIT_TARGET_MB
    print(f"block exit, {steps} steps of a small MLP under trainlens.watch")
    print(f"  first block exit in the process: +{figures['first_exit_mb']} MB (imports, once)")
    print(
        f"  RSS before entering {before:.1f} MB, end of loop {loop_end:.1f} MB, after the "
        f"block {after:.1f} MB ({after_gc:.1f} MB after gc.collect())"
    )
    print(
        f"  the exit adds {figures['exit_adds_mb']} MB (target <= {EXIT_TARGET_MB})  "
        f"{'ok' if ok else 'MISSED'}; kept after the block, against before entering: "
        f"{figures['kept_mb']} MB ({figures['records_mb']} MB of it lens.records' data)"
    )
    if trimmed is not None:
        print(f"  glibc's malloc_trim would return {trimmed:.1f} MB of freed heap (not called)")
    Path(json_path).write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {json_path}")
    return 0 if ok else 1


# --- what survives a SIGKILL (issue 16 §1) ------------------------------------------------
_CHILD = """
import sys, time, torch
from torch import nn
import trainlens
torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x, y = torch.randn(32, 32), torch.randint(0, 10, (32,))
with trainlens.watch(model, opt, run_dir=sys.argv[1], quiet=True):
    t0 = time.perf_counter()
    for step in range(10**9):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(step + 1, round(time.perf_counter() - t0, 3), flush=True)
"""


def sigkill_survival(min_s: float = 12.0, max_s: float = 40.0, seed: int | None = None) -> dict:
    """Kill a watched training process with SIGKILL at a random moment; how many of the
    steps it ran are on disk (in its streamed records)?"""
    import random
    import signal
    import subprocess

    from trainlens._stream import STREAM_EVERY_S, load_stream

    kill_after = random.Random(seed).uniform(min_s, max_s)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(run_dir)], stdout=subprocess.PIPE, text=True
        )
        ran, t_ran = 0, 0.0
        assert proc.stdout is not None
        for line in proc.stdout:
            ran, t_ran = int(line.split()[0]), float(line.split()[1])
            if t_ran >= kill_after:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        records = load_stream(run_dir)
        on_disk = int(records.steps["step"].max()) + 1 if len(records.steps) else 0
        t_disk = float(records.steps["time_s"].max()) if len(records.steps) else 0.0
    return {
        "killed_after_s": round(t_ran, 2),
        "steps_run": ran,  # at least; up to 49 more ran after the last line printed
        "steps_on_disk": on_disk,
        "fraction_on_disk": round(on_disk / ran, 3) if ran else None,
        "seconds_lost": round(t_ran - t_disk, 2),
        "bound_s": STREAM_EVERY_S,
    }


if __name__ == "__main__":
    if "--sigkill" in sys.argv:
        fig = sigkill_survival()
        print(
            f"SIGKILL after {fig['killed_after_s']} s: {fig['steps_on_disk']} of "
            f"{fig['steps_run']} steps on disk ({fig['fraction_on_disk']:.1%}); "
            f"{fig['seconds_lost']} s lost (bound {fig['bound_s']} s)"
        )
        sys.exit(0)
    sys.exit(main())
