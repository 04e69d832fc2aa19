"""A DDP training program for tests/test_distributed.py, started by torchrun (gloo, CPU).

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_program.py OUT SCENARIO...

Scenarios run one after the other in the same process group, each in `OUT/<scenario>`:
`healthy`; `bug` (rank 1 gets `[N]` targets for an `[N, 1]` MSE: silent broadcast on rank
1 only); `raise` (rank 1 raises in step 5) or `vanish` (rank 1 dies at once in step 5),
each of which ends the program, so last.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import trainlens


def main(out: Path, scenarios: list[str]) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for scenario in scenarios:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(
            nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        loss_fn = nn.MSELoss()
        g = torch.Generator().manual_seed(rank)
        x = torch.randn(64, 4, generator=g)
        y = x.sum(dim=1, keepdim=True) * 0.5
        with trainlens.watch(model, opt, run_dir=out / scenario):
            for step in range(30):
                i = (step * 16) % 64
                xb, yb = x[i : i + 16], y[i : i + 16]
                if scenario == "bug" and rank == 1:
                    yb = yb.squeeze(1)  # [N] targets for [N, 1] predictions
                if scenario == "raise" and rank == 1 and step == 5:
                    raise RuntimeError("planted failure on rank 1")
                if scenario == "vanish" and rank == 1 and step == 5:
                    os._exit(3)  # a hard crash: no drill, no done marker
                loss = loss_fn(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
