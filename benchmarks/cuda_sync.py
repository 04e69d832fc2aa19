"""Host-device synchronisations per step under trainlens.watch, on a CUDA device.

    python benchmarks/cuda_sync.py            # exits 0 with a note where no GPU is present
    python benchmarks/cuda_sync.py --steps 600

A CUDA kernel launch returns at once; the host runs ahead and the GPU stays busy. A
`.item()`, a `.cpu()` or a `nonzero` stalls the host until the GPU has caught up, and a
tool that did one per step would cost a step's queue every step. trainlens keeps its
statistics on the device and reads them back in one go every `Sampling.flush_every`
(50) steps; the first-batch checks of step 0 read back once a run.

`torch.cuda.set_sync_debug_mode("warn")` makes every synchronising call warn. Each step
of a plain loop and of the same loop under `watch` (defaults) runs with the warnings
recorded, and the steps that synchronised are listed. Target: after step 0, a watched
step synchronises only where the deferred read-back falls (the step after which
`step % 50 == 0`), as many steps as the plain loop otherwise (which has none).
Exit status 1 when a step off that cadence synchronised.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from overhead import WORKLOADS, _workload  # the same workloads, here on the GPU

import trainlens
from trainlens._probes._state import Sampling

SYNC_WARNING = "synchronizing CUDA operation"  # torch's text in set_sync_debug_mode("warn")


def _syncing_steps(step: Callable, steps: int) -> list[int]:
    """Indices of the steps during which a synchronising CUDA call was made."""
    out = []
    for i in range(steps):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            step()
        if any(SYNC_WARNING in str(w.message) for w in seen):
            out.append(i)
    return out


def measure(name: str, steps: int, tmp: Path, device: torch.device) -> dict:
    model, opt, step = _workload(name, device)
    for _ in range(5):
        step()  # lazy CUDA init, cuBLAS handles, allocator: their syncs are not ours
    torch.cuda.synchronize()
    flush_every = Sampling().flush_every
    torch.cuda.set_sync_debug_mode("warn")
    try:
        plain = _syncing_steps(step, steps)
        with trainlens.watch(model, opt, run_dir=tmp / name, quiet=True):
            watched = _syncing_steps(step, steps)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # step i ends with state.step == i + 1; the read-back runs when that is a multiple
    allowed = {0} | {i for i in range(steps) if (i + 1) % flush_every == 0}
    off_cadence = [i for i in watched if i not in allowed and i not in plain]
    return {
        "workload": name,
        "steps": steps,
        "plain_syncing_steps": plain,
        "watch_syncing_steps": watched,
        "off_cadence": off_cadence,
        "ok": not off_cadence,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--only", nargs="*", choices=list(WORKLOADS), default=["mlp", "transformer"]
    )
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be a positive number of steps, not {args.steps}")
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to measure (the CPU has no host-device sync)")
        return 0
    device = torch.device("cuda")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            r = measure(name, args.steps, Path(tmp), device)
            results.append(r)
            watched = r["watch_syncing_steps"]
            print(
                f"{name:12s} plain: {len(r['plain_syncing_steps'])} of {r['steps']} steps "
                f"synchronised; watch: {len(watched)} (steps {watched[:12]}"
                f"{' ...' if len(watched) > 12 else ''}); "
                f"off the read-back cadence: {r['off_cadence'] or 'none'}  "
                f"{'ok' if r['ok'] else 'MISSED'}"
            )
    report = {"device": torch.cuda.get_device_name(), "results": results}
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
