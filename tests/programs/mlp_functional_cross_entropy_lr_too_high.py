"""A pytorch/examples-style MNIST-like classifier trained with `F.cross_entropy` at lr 5 (SGD).

The loss is computed as a function in the loop; its divergence must be seen as with
`nn.CrossEntropyLoss`.
"""

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "diverging", "cause": "lr_too_high", "module": None}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(640, 16)
    y = (x @ torch.randn(16, 10)).argmax(1)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0, momentum=0.9)  # the bug
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for i in range(0, len(x), 16):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x[i : i + 16]), y[i : i + 16])
            loss.backward()
            optimizer.step()
