"""A regression loop that calls `optimizer.zero_grad()` once, before the epochs, instead of
once per step (the "zero_grad outside the loop" bug of many forum and issue threads). With
Adam the summed gradients are normalised away and the loss still falls, so no symptom
shows; the gradients carried over from every earlier step are the bug on their own
(issue 18 §6)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "zero_grad_missing", "module": None}
PER_STEP = False


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 10, generator=g)
    y = x @ torch.randn(10, 1, generator=g) + 0.1 * torch.randn(1024, 1, generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.MSELoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        optimizer.zero_grad()  # the bug: once, outside the loop
        for _epoch in range(3):
            for xb, yb in loader:
                if PER_STEP:
                    optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
