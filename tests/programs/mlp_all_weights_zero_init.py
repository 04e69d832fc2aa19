"""A from-scratch MLP whose `init_weights` sets every Linear's weight and bias to zero
(`nn.init.zeros_`, the "I initialised the weights to zero and it doesn't learn" threads:
symmetric units, and behind a ReLU no gradient at all). Only the output bias can move, so
the loss settles at the class prior; the hidden layers never get a non-zero gradient."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "no_gradient_flow", "module": "fc1"}
ZERO_INIT = True


class MLP(nn.Module):
    def __init__(self, d_in: int = 20, hidden: int = 64, classes: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, classes)
        self.act = nn.ReLU()
        if ZERO_INIT:
            self.apply(self.init_weights)

    @staticmethod
    def init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)  # the bug: meant xavier_uniform_
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc2(self.act(self.fc1(x)))))


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 20, generator=g)
    y = (x[:, :5] @ torch.randn(5, 4, generator=g)).argmax(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(2):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
