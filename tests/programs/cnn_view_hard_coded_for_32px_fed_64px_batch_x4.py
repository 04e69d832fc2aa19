"""A CIFAR-10 style CNN in the pytorch/examples manner (three conv + max-pool blocks,
then `x = x.view(-1, 64 * 4 * 4)` hard-coded in `forward`, `fc1`, dropout, `fc2`;
`nn.CrossEntropyLoss`, SGD with momentum), reused on 64x64 images (Tiny-ImageNet-like
crops). The bug: the three pools leave 8x8 maps, not 4x4, so each sample has
64*8*8 = 4096 = 4 * 1024 features and the hard-coded `view(-1, 1024)` does not raise: it
cuts every sample into four rows, the batch of 64 becomes 256 rows, `fc1` accepts them,
and the loss is the first to complain: "Expected input batch_size (256) to match target
batch_size (64)". No sample mixes with another (each row is a quarter of one sample).
`FLATTEN_PER_SAMPLE = True` flattens per sample (`torch.flatten(x, 1)`) with `fc1` sized
for 8x8 maps. The drill must say where the rows changed: at the input of `fc1`, and that
the fix is a per-sample flatten, not a reshaped target."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "shape_mismatch", "cause": "loss_target_shape_mismatch", "module": "fc1"}
FLATTEN_PER_SAMPLE = False


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(64 * 8 * 8 if FLATTEN_PER_SAMPLE else 64 * 4 * 4, 256)
        self.dropout = nn.Dropout(0.25)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = self.pool(F.relu(self.conv3(x)))
        # the bug: `view(-1, 64 * 4 * 4)` was written for 32x32 inputs
        x = torch.flatten(x, 1) if FLATTEN_PER_SAMPLE else x.view(-1, 64 * 4 * 4)
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)


def make_images(n: int = 256, size: int = 64):
    """Ten classes of normalised RGB crops: a class colour and stripe frequency plus noise."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (n,), generator=g)
    colours = torch.randn(10, 3, 1, 1, generator=g)
    xs = torch.linspace(0, 3.1416, size)
    stripes = torch.stack([torch.sin(xs * (k + 1)).expand(size, size) for k in range(10)])
    images = colours[labels] * 0.5 + stripes[labels].unsqueeze(1)
    return images + 0.5 * torch.randn(n, 3, size, size, generator=g), labels


def main(run_dir) -> None:
    torch.manual_seed(0)
    images, labels = make_images()
    net = Net()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    try:
        with trainlens.watch(net, optimizer, run_dir=run_dir, quiet=True):
            for _epoch in range(2):
                net.train()
                for i in range(0, len(images), 64):
                    inputs, targets = images[i : i + 64], labels[i : i + 64]
                    optimizer.zero_grad()
                    loss = criterion(net(inputs), targets)
                    loss.backward()
                    optimizer.step()
    except ValueError:
        pass  # the planted crash (batch sizes differ in the loss); the drill is judged
