"""A small CIFAR-style CNN (pytorch tutorial "Training a classifier": conv-pool-conv-pool,
three linears, CrossEntropyLoss, SGD with momentum) whose learning rate was typed as 1.0
instead of 0.001-0.01 (the "loss stuck at 2.30" threads). The loss never rises enough to
diverge: it sits noisily at ln(10) while the oversized steps throw the weights about."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "lr_too_high", "module": None}
LR = 1.0


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 12, 3)
        self.fc1 = nn.Linear(12 * 2 * 2, 48)
        self.fc2 = nn.Linear(48, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (1024,), generator=g)
    images = torch.randn(10, 3, 14, 14, generator=g)[labels] + torch.randn(
        1024, 3, 14, 14, generator=g
    )
    model = Net()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(2):
            for i in range(0, len(images), 32):
                inputs, target = images[i : i + 32], labels[i : i + 32]
                optimizer.zero_grad()
                loss = criterion(model(inputs), target)
                loss.backward()
                optimizer.step()
