"""The torchvision fine-tuning recipe done in the wrong order: the optimizer is built from
`model.parameters()`, then the classifier head is swapped for one with the new number of
classes (`model.fc = nn.Linear(...)`), so the new head is in no param group and stays at
its random initialisation (the "replaced the last layer after creating the optimizer"
threads). The backbone trains against a random head; the head gets gradients and never
moves."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "params_not_in_optimizer", "module": "fc"}
HEAD_FIRST = False


class SmallResNet(nn.Module):
    """A ResNet-flavoured backbone: conv-bn-relu stem, one residual block, global pool."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (640,), generator=g)
    colours = torch.randn(5, 3, 1, 1, generator=g)
    images = colours[labels] + 0.5 * torch.randn(640, 3, 12, 12, generator=g)
    model = SmallResNet()
    if HEAD_FIRST:
        model.fc = nn.Linear(model.fc.in_features, 5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if not HEAD_FIRST:
        model.fc = nn.Linear(model.fc.in_features, 5)  # the bug: after the optimizer
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        model.train()
        for _epoch in range(2):
            for i in range(0, len(images), 32):
                optimizer.zero_grad()
                loss = criterion(model(images[i : i + 32]), labels[i : i + 32])
                loss.backward()
                optimizer.step()
