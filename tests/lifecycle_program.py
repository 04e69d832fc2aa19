"""A small training program for tests/test_lifecycle.py, run as a real subprocess.

    python tests/lifecycle_program.py RUN_DIR ACTION [STEP]

Trains an MLP (pytorch/examples style loop) under `trainlens.watch` for 60 steps, with
the records streamed at every step (so what survives is exact, not a matter of timing),
and at step STEP does ACTION: `none`, `sigterm` (the process signals itself),
`sigterm-handled` (the program has its own SIGTERM handler), `sigkill`, `os_exit`,
`sys_exit0`, `sys_exit1`, `fsize` (a file-size limit of 1 KB from here on), `rmdir` (the
run dir is removed), `wait` (prints READY and waits for a line on stdin), `ready`
(prints `READY <step>` after each step from STEP on, then sleeps, to be killed). After
the block it prints `AFTER BLOCK` and writes `RUN_DIR.after`: the user's own code.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

import trainlens
from trainlens import _stream

_stream.FIRST_STREAM_S = 0.0
_stream.STREAM_EVERY_S = 0.0


def main(run_dir: Path, action: str, at: int, checkpoint: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.MSELoss()
    x = torch.randn(256, 8)
    y = x[:, :1] * 2 - x[:, 1:2]
    if action == "sigterm-handled":

        def on_term(signum, frame):
            print("USER HANDLER", flush=True)
            sys.exit(0)

        signal.signal(signal.SIGTERM, on_term)
    with trainlens.watch(model, optimizer, run_dir=run_dir, checkpoint=checkpoint):
        for step in range(60):
            if step == at:
                act(action, run_dir, step)
            batch = slice((step * 32) % 256, (step * 32) % 256 + 32)
            loss = loss_fn(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if action == "ready" and step >= at:
                print(f"READY {step}", flush=True)
                time.sleep(0.05)
    print("AFTER BLOCK", flush=True)
    Path(f"{run_dir}.after").write_text("the user's code after the block ran\n")


def act(action: str, run_dir: Path, step: int) -> None:
    if action in ("sigterm", "sigterm-handled"):
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "os_exit":
        os._exit(3)
    elif action == "sys_exit0":
        sys.exit(0)
    elif action == "sys_exit1":
        sys.exit(1)
    elif action == "fsize":
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
    elif action == "rmdir":
        shutil.rmtree(run_dir)
    elif action == "wait":
        print("READY", flush=True)
        sys.stdin.readline()


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        Path(args[0]),
        args[1],
        int(args[2]) if len(args) > 2 else -1,
        checkpoint="--checkpoint" in args,
    )
