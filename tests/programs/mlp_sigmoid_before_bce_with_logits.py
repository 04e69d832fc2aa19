"""A binary classifier (a Kaggle/tabular-tutorial shape: Linear-ReLU-Dropout blocks, one
output unit) whose model ends in `nn.Sigmoid()` and is trained with
`nn.BCEWithLogitsLoss`, which applies the sigmoid again (the "BCEWithLogitsLoss with
sigmoid output" threads: the loss is squashed into [0.31, 0.69] and barely moves). The
loss's input is already probabilities: the same class as softmax before
`CrossEntropyLoss`."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "softmax_before_loss", "module": "net.4"}
SIGMOID_IN_MODEL = True


class BinaryClassifier(nn.Module):
    def __init__(self, d_in: int = 16, hidden: int = 32):
        super().__init__()
        layers = [
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 1),
        ]  # fmt: skip
        if SIGMOID_IN_MODEL:
            layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 16, generator=g)
    y = ((x[:, :3] @ torch.tensor([1.5, -2.0, 1.0])) > 0).float()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)
    model = BinaryClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.BCEWithLogitsLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(2):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
