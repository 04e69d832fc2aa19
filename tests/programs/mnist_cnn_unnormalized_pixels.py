"""pytorch/examples mnist-style `Net` (two convs, max-pool, dropout, two linears,
`log_softmax` + `F.nll_loss`; SGD with momentum where the example uses Adadelta). The
bug, from "loss not decreasing" threads (e.g. anuragranj/spynet#3 "images not
normalized"): the images are fed as raw 0-255 pixel values, the `ToTensor()` /
`Normalize` step replaced by a plain `.float()` on the uint8 array."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "unnormalized_input", "module": None}
NORMALIZE = False


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(16 * 6 * 6, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


def digits(n: int = 1024):
    """Fake 16x16 'digits': a class-specific stroke pattern plus noise, stored as uint8
    like a decoded image file."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (n,), generator=g)
    prototypes = (torch.rand(10, 16, 16, generator=g) > 0.7).float()
    images = prototypes[labels] * 200 + torch.rand(n, 16, 16, generator=g) * 55
    return images.to(torch.uint8).unsqueeze(1), labels


def main(run_dir) -> None:
    torch.manual_seed(0)
    images, labels = digits()
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        model.train()
        for _epoch in range(2):
            for i in range(0, len(images), 32):
                data = images[i : i + 32].float()  # the bug: no ToTensor() / Normalize
                if NORMALIZE:
                    data = (data / 255.0 - 0.1307) / 0.3081
                target = labels[i : i + 32]
                optimizer.zero_grad()
                loss = F.nll_loss(model(data), target)
                loss.backward()
                optimizer.step()
