"""A three-class classifier whose model ends in `nn.Sigmoid()` (kept from a binary version
of the same script, or "to get probabilities") and is trained with `nn.CrossEntropyLoss`,
which applies its own log-softmax. The logits are squashed into [0, 1]: the softmax of such
a row cannot put more than e / (e + 2) = 0.58 on any class, and the loss sits near ln 3.
The rows do not sum to 1, so it is not the softmax-before-loss picture either; every value
in [0, 1] is."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "softmax_before_loss", "module": "net.3"}
SIGMOID_IN_MODEL = True


class Classifier(nn.Module):
    def __init__(self, d_in: int = 10, hidden: int = 32, classes: int = 3):
        super().__init__()
        layers = [nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, classes)]
        if SIGMOID_IN_MODEL:
            layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1536, 10, generator=g)
    y = (x[:, :3] @ torch.tensor([[2.0, -1.0, 0.5], [-1.0, 2.0, 0.5], [0.5, 0.5, -2.0]])).argmax(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(3):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
