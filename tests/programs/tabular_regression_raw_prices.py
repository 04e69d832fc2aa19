"""A first tabular-regression notebook: house prices predicted from standardised features
by a small MLP with Adam, the targets left in dollars (around 3e5). The network's outputs
start near 0 and Adam moves them ~1e-3 a step: the loss sits above what predicting the
mean price scores. Planted bug: unscaled targets (the healthy twin standardises them)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "unnormalized_target", "module": None}
STANDARDISE = False


def make_data(n: int = 1500) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    area = torch.rand(n, 1, generator=g) * 200 + 40  # m^2
    rooms = torch.randint(1, 7, (n, 1), generator=g).float()
    age = torch.rand(n, 1, generator=g) * 80
    price = 1500 * area + 8000 * rooms - 900 * age + 60000
    price = price + 15000 * torch.randn(n, 1, generator=g)
    x = torch.cat([area, rooms, age], dim=1)
    return (x - x.mean(0)) / x.std(0), price


def main(run_dir) -> None:
    torch.manual_seed(0)
    x, y = make_data()
    if STANDARDISE:
        y = (y - y.mean()) / y.std()
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    model = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 1))  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.MSELoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _ in range(8):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
