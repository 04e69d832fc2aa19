"""A tabular classifier whose preparation script shuffles the feature matrix and the label
vector with two separate permutations (the bug of udacity/sdc-issue-reports#1326 and
dennybritz/cnn-text-classification-tf#136: `x = x[perm_a]`, `y = y[perm_b]`). The loss sits
at the entropy of the class prior; the model, the loop and the optimizer are fine."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "label_mismatch", "module": None}
SAME_PERMUTATION = False


def load_table(n: int = 1536, classes: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 12, generator=g)
    y = (x[:, :4] @ torch.randn(4, classes, generator=g)).argmax(1)
    perm = torch.randperm(n, generator=g)
    x = x[perm]
    if not SAME_PERMUTATION:
        perm = torch.randperm(n, generator=g)  # the bug: a second, different shuffle
    y = y[perm]
    return x, y


class TabularNet(nn.Module):
    def __init__(self, d_in: int = 12, classes: int = 4):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(d_in, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 64), nn.ReLU(),
            nn.Linear(64, classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def main(run_dir) -> None:
    torch.manual_seed(0)
    x, y = load_table()
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    model = TabularNet()
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
