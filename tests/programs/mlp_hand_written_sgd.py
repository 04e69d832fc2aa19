"""Healthy: no optimizer, the update written by hand (`p -= lr * p.grad` under no_grad,
then `model.zero_grad()`), the way the first chapter of a course trains."""

import torch
from torch import nn

import trainlens

EXPECT = None


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    y = (x @ torch.randn(6, 2)).argmax(1)
    model = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 2))
    loss_func = nn.CrossEntropyLoss()
    lr, bs = 0.2, 32
    with trainlens.watch(model, run_dir=run_dir, quiet=True):
        for _epoch in range(6):
            for i in range(0, len(x), bs):
                loss = loss_func(model(x[i : i + bs]), y[i : i + bs])
                loss.backward()
                with torch.no_grad():
                    for p in model.parameters():
                        p -= p.grad * lr
                    model.zero_grad()
