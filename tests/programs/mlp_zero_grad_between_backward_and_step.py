"""A regression loop that calls `optimizer.zero_grad()` after `loss.backward()`.

The gradients are computed and cleared before `optimizer.step()` reads them: no
parameter ever moves. A "detached graph" would be the wrong story (issue 18 §7).
"""

import torch
from torch import nn

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "optimizer_not_stepping", "module": None}


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(512, 10)
    y = x @ torch.randn(10, 1) + 0.1 * torch.randn(512, 1)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.MSELoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(3):
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 32):
                idx = perm[i : i + 32]
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                optimizer.zero_grad()  # the bug: clears what backward() just computed
                optimizer.step()
