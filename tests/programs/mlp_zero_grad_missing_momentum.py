"""pytorch/examples-style classifier loop with momentum SGD; `optimizer.zero_grad()` forgotten.

The gradients pile up step after step, momentum amplifies them and the loss blows up: the
drill must name the stale gradients, not "clip the gradients" (issue 18 §6).
"""

import torch
from torch import nn

import trainlens

EXPECT = {"symptom": "diverging", "cause": "zero_grad_missing", "module": None}


class Net(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, classes)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    y = (x @ torch.randn(16, 4)).argmax(1)
    loader = [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(4):
            model.train()
            for data, target in loader:
                output = model(data)
                loss = criterion(output, target)
                loss.backward()  # the bug: no optimizer.zero_grad() in this loop
                optimizer.step()
