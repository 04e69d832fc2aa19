"""A classifier trained on labels that carry nothing (a `targets.csv` column that does not
belong to the inputs), in a model that also defines a layer its forward never uses. The
loss sits at ln(C); no specific cause shows, and the unused layer's missing gradients mean
the machinery cannot be shown healthy either: the honest answer is "not sure"."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "unknown", "module": None}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 3)
        self.aux = nn.Linear(32, 3)  # an auxiliary head left over from an experiment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = torch.randint(0, 3, (512,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for x_b, y_b in loader:
            optimizer.zero_grad()
            loss = criterion(model(x_b), y_b)
            loss.backward()
            optimizer.step()
