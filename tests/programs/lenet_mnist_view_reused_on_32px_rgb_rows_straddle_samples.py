"""An MNIST LeNet script (`conv1`, `conv2` with 5x5 kernels and 2x2 max-pools, then
`x = x.view(-1, 16 * 4 * 4)` hard-coded in `forward`, `fc1 = nn.Linear(16 * 4 * 4, 120)`,
`fc2`, `fc3`; `nn.CrossEntropyLoss`, SGD with momentum) reused on CIFAR-10-like 32x32
RGB images, with only `conv1`'s in_channels changed to 3. The bug: 32x32 inputs leave
5x5 maps, so a sample has 16*5*5 = 400 features; `view(-1, 256)` does not raise because
64 * 400 = 100 * 256: it cuts the batch of 64 into 100 rows, most of them made of the end
of one sample and the start of the next, `fc1` accepts them, and the loss raises
"Expected input batch_size (100) to match target batch_size (64)". The rows mix samples,
but what the user sees is the loss raising on 100 rows against 64 targets: the drill must
say the rows changed at the input of `fc1` (the shape trace shows it) and give the
per-sample flatten as the fix. `FLATTEN_PER_SAMPLE = True` uses `torch.flatten(x, 1)` with
`fc1` sized for 5x5 maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "shape_mismatch", "cause": "loss_target_shape_mismatch", "module": "fc1"}
FLATTEN_PER_SAMPLE = False


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)  # was Conv2d(1, 6, 5) for MNIST
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5 if FLATTEN_PER_SAMPLE else 16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        # the bug: `view(-1, 16 * 4 * 4)` was written for MNIST, whose 28x28 leave 4x4 maps
        x = torch.flatten(x, 1) if FLATTEN_PER_SAMPLE else x.view(-1, 16 * 4 * 4)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def fake_cifar(n: int = 512):
    """Normalised 32x32 RGB images: a class colour and a class texture plus noise."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (n,), generator=g)
    colours = torch.randn(10, 3, 1, 1, generator=g)
    textures = torch.randn(10, 1, 32, 32, generator=g)
    images = 0.5 * colours[labels] + textures[labels] + 0.5 * torch.randn(n, 3, 32, 32, generator=g)
    return images, labels


def main(run_dir) -> None:
    torch.manual_seed(0)
    images, labels = fake_cifar()
    net = LeNet()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    try:
        with trainlens.watch(net, optimizer, run_dir=run_dir, quiet=True):
            for _epoch in range(2):
                for i in range(0, len(images), 64):
                    inputs, targets = images[i : i + 64], labels[i : i + 64]
                    optimizer.zero_grad()
                    outputs = net(inputs)
                    loss = criterion(outputs, targets)
                    loss.backward()
                    optimizer.step()
    except ValueError:
        pass  # the planted crash (batch sizes differ in the loss); the drill is judged
