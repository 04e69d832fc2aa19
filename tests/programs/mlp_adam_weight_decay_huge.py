"""A classifier trained with `Adam(..., weight_decay=1.0)`: the author meant AdamW's
decoupled 0.01-0.1 and wrote Adam's coupled L2 with a value a hundred times too big (the
"Adam weight_decay loss not decreasing" threads). The penalty pins every weight near zero,
so the logits stay near constant and the loss sits at ln(C). Weight decay is nothing the
catalogue observes: the honest answer is "not sure", never a confident wrong cause."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "unknown", "module": None}


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 16, generator=g)
    y = (x[:, :6] @ torch.randn(6, 5, generator=g)).argmax(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 5))  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1.0)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(3):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
