"""Per-step cost of trainlens.watch against a plain loop and against the hook floor.

    python benchmarks/overhead.py            # all workloads, prints a table, writes JSON
    python benchmarks/overhead.py --quick    # fewer repetitions

Three modes run the same training step, interleaved within one process so machine noise
hits all of them alike: `plain` (no hooks), `floor` (a no-op forward hook on every module
and a no-op optimizer step hook: what any hook-based tool pays at least), and `watch`
(trainlens with its defaults). Timings are taken in steady state: each watched block
first runs past the dense-sampling phase (the first 100 steps, every step sampled), then
times `--steps` steps. The dense phase is timed separately and reported for reference.
CPU, one thread (`torch.set_num_threads(1)`), as the targets in the README are stated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import trainlens

Step = Callable[[], None]


def _workload(name: str) -> tuple[nn.Module, torch.optim.Optimizer, Step]:
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
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return model, opt, step


@contextlib.contextmanager
def _floor(model: nn.Module, opt: torch.optim.Optimizer):
    """No-op hooks where trainlens puts its own: the cost of hooking at all."""

    def noop(*args):
        return None

    handles = [m.register_forward_pre_hook(noop) for m in model.modules()]
    handles += [m.register_forward_hook(noop) for m in model.modules()]
    handles.append(opt.register_step_post_hook(noop))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _time(step: Step, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def measure(name: str, steps: int, reps: int, tmp: Path) -> dict[str, float]:
    model, opt, step = _workload(name)
    for _ in range(20):
        step()  # warm-up: allocator, kernels, lazy init
    times: dict[str, list[float]] = {"plain": [], "floor": [], "watch": [], "watch_dense": []}
    for rep in range(reps):
        times["plain"].append(_time(step, steps))
        with _floor(model, opt):
            times["floor"].append(_time(step, steps))
        with trainlens.watch(model, opt, run_dir=tmp / f"{name}-{rep}", quiet=True):
            times["watch_dense"].append(_time(step, 100))
            times["watch"].append(_time(step, steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (max(v) - min(v)) / statistics.median(v) for k, v in times.items()}
    return {
        "plain_ms": med["plain"] * 1e3,
        "floor_ms": med["floor"] * 1e3,
        "watch_ms": med["watch"] * 1e3,
        "watch_dense_ms": med["watch_dense"] * 1e3,
        "watch/plain": med["watch"] / med["plain"],
        "watch/floor": med["watch"] / med["floor"],
        "floor/plain": med["floor"] / med["plain"],
        "dense/plain": med["watch_dense"] / med["plain"],
        "spread_plain": spread["plain"],
        "spread_watch": spread["watch"],
    }


#: workload -> (steps per repetition, target for watch/plain)
WORKLOADS = {
    "tiny": (400, 1.5),
    "mlp": (100, 1.15),
    "cnn": (40, 1.03),
    "transformer": (10, 1.03),
    "lstm": (20, 1.03),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", nargs="*", choices=list(WORKLOADS), help="some workloads")
    parser.add_argument("--json", default="benchmarks/overhead.json", help="where to write")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reps = 3 if args.quick else 7
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or WORKLOADS:
            steps, target = WORKLOADS[name]
            r = measure(name, steps, reps, Path(tmp))
            r["target"] = target
            r["meets_target"] = r["watch/plain"] <= target
            results[name] = r
            print(
                f"{name:12s} plain {r['plain_ms']:8.3f} ms  floor/plain {r['floor/plain']:.3f}  "
                f"watch/plain {r['watch/plain']:.3f} (target <= {target})  "
                f"watch/floor {r['watch/floor']:.3f}  dense/plain {r['dense/plain']:.3f}",
                flush=True,
            )
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
