"""A pytorch/examples-style MLP classifier whose loop forgets `optimizer.zero_grad()`.

Gradients pile up step after step; with momentum the updates grow until most ReLUs of the
second hidden layer die. The dead ReLUs are a consequence: the root is the missing reset.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "zero_grad_missing", "module": None}
ZERO_GRAD = False


class Net(nn.Module):
    def __init__(self, d_in: int = 8, hidden: int = 64, classes: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, classes)
        self.act1 = nn.ReLU()
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


def make_data(n: int = 512, d_in: int = 8, classes: int = 3) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d_in, generator=g)
    w = torch.randn(d_in, classes, generator=g)
    return TensorDataset(x, (x @ w).argmax(dim=1))


def train(model, loader, optimizer, criterion, epochs: int) -> None:
    model.train()
    for _ in range(epochs):
        for data, target in loader:
            if ZERO_GRAD:
                optimizer.zero_grad()
            loss = criterion(model(data), target)
            loss.backward()
            optimizer.step()


def main(run_dir) -> None:
    torch.manual_seed(0)
    model = Net()
    loader = DataLoader(make_data(), batch_size=32, shuffle=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        train(model, loader, optimizer, nn.CrossEntropyLoss(), epochs=5)
