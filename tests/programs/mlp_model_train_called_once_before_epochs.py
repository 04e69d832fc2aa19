"""A classifier with batch norm and dropout whose loop calls `model.train()` once, before
the epochs, and `model.eval()` for each epoch's validation.

From the second epoch on it trains in eval mode: dropout is off and batch norm normalises
with the running statistics frozen at the end of the first epoch. The losses it trains on
are filed under "val". Planted bug: `model.train()` missing at the top of the epoch loop.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import trainlens

EXPECT = {"symptom": "overfitting", "cause": "train_mode_missing", "module": None}


def evaluate(model, loader, criterion) -> float:
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            total += criterion(model(x), y).item() * len(y)
            n += len(y)
    return total / n


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 20, generator=g)
    y = (x[:, :5].sum(1) > 0).long() + (x[:, 5] > 1).long()
    train_set, val_set = random_split(TensorDataset(x, y), [1000, 200], generator=g)
    train_loader = DataLoader(train_set, batch_size=50, shuffle=True, generator=g)
    val_loader = DataLoader(val_set, batch_size=100)
    model = nn.Sequential(
        nn.Linear(20, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 3),
    )  # fmt: skip
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        model.train()
        for _ in range(6):
            for xb, yb in train_loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
            evaluate(model, val_loader, criterion)
