"""A loss written by hand (`-(log_softmax).gather(...).mean()`), never logged with
`lens.log_loss`: trainlens reads it from the root of `loss.backward()`, and the healthy
run stays clean (it used to say "no loss recorded")."""

import torch
from torch import nn

import trainlens

EXPECT = None


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(256, 12)
    y = (x @ torch.randn(12, 4)).argmax(1)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(3):
            for i in range(0, len(x), 32):
                logp = torch.log_softmax(model(x[i : i + 32]), dim=1)
                loss = -logp.gather(1, y[i : i + 32, None]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
