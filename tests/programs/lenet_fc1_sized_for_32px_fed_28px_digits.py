"""The PyTorch "Neural Networks" blitz tutorial's LeNet (`conv1 = Conv2d(1, 6, 5)`,
`conv2 = Conv2d(6, 16, 5)`, 2x2 max-pools, `fc1 = nn.Linear(16 * 5 * 5, 120)`, `fc2`,
`fc3`), copied into an MNIST script and trained with `nn.CrossEntropyLoss` and Adam.
The bug (the "mat1 and mat2 shapes cannot be multiplied (64x256 and 400x120)" threads):
the tutorial sized `fc1` for its 32x32 input, where the second pool leaves 5x5 maps;
MNIST digits are 28x28, which leave 4x4, so `fc1` receives 16*4*4 = 256 features and
raises on the first batch. `FC1_FOR_28PX = True` sizes it for the data."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "shape_mismatch", "cause": "layer_input_mismatch", "module": "fc1"}
FC1_FOR_28PX = False


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        # 5*5 from the tutorial's 32x32 image; 28x28 digits leave 4*4
        self.fc1 = nn.Linear(16 * 4 * 4 if FC1_FOR_28PX else 16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)  # flatten all dimensions except the batch dimension
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def fake_mnist(n: int = 1024):
    """28x28 'digits': a blurred class-specific stroke pattern plus noise, already scaled
    and normalised like `ToTensor()` + `Normalize((0.1307,), (0.3081,))` would."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (n,), generator=g)
    strokes = (torch.rand(10, 1, 28, 28, generator=g) > 0.8).float()
    strokes = F.avg_pool2d(strokes, 3, stride=1, padding=1)
    images = strokes[labels] + 0.2 * torch.rand(n, 1, 28, 28, generator=g)
    return (images - 0.1307) / 0.3081, labels


def main(run_dir) -> None:
    torch.manual_seed(0)
    images, labels = fake_mnist()
    net = Net()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    try:
        with trainlens.watch(net, optimizer, run_dir=run_dir, quiet=True):
            for _epoch in range(3):
                running_loss = 0.0
                for i in range(0, len(images), 64):
                    inputs, targets = images[i : i + 64], labels[i : i + 64]
                    optimizer.zero_grad()
                    outputs = net(inputs)
                    loss = criterion(outputs, targets)
                    loss.backward()
                    optimizer.step()
                    running_loss += loss.item()
    except RuntimeError:
        pass  # the planted crash (mat1 and mat2 shapes cannot be multiplied); the drill is judged
