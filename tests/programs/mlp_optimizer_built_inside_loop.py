"""A classifier whose optimizer line sits one indent too deep: `optimizer = optim.Adam(...)`
inside the batch loop, right above `optimizer.zero_grad()`. The optimizer built before the
loop (and watched) never steps; a fresh Adam steps each batch and forgets its moment
estimates every time. The loss still falls, slowly. Planted bug: the optimizer rebuilt
every step."""

from __future__ import annotations

import torch
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "optimizer_rebuilt", "module": None}


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(800, 10, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 0.5).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=40, shuffle=True, generator=g)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 3))
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _ in range(5):
            for xb, yb in loader:
                optimizer = optim.Adam(model.parameters(), lr=1e-3)
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
