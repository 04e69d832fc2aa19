"""pytorch/examples-style classifier returning `F.softmax(...)`, trained with `F.cross_entropy`.

The loss gets probabilities where it expects logits.
"""

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "softmax_before_loss", "module": None}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 64)
        self.fc2 = nn.Linear(64, 5)

    def forward(self, x):
        return F.softmax(self.fc2(F.relu(self.fc1(x))), dim=1)  # the bug


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(640, 20)
    y = (x @ torch.randn(20, 5)).argmax(1)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(3):
            for i in range(0, len(x), 32):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
                loss.backward()
                optimizer.step()
