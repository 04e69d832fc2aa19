"""Logistic regression with its binary cross-entropy written by hand, the minus left out:
`(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()` is the log-likelihood itself.
The optimizer drives it down by pushing each probability to the wrong side until
`log(0)` gives -inf, then NaN. "Guard the log" would not help: the loss still rewards
wrong answers. The healthy twin puts the minus back (`SIGN = -1.0`)."""

import torch
from torch import nn

import trainlens

EXPECT = {"symptom": "non_finite", "cause": "loss_unbounded_below"}
SIGN = 1.0  # the bug: the log-likelihood, not its negation
LR = 0.1


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(1024, 10)
    t = (x @ torch.randn(10) > 0).float()
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(10):
            for i in range(0, len(x), 64):
                p = torch.sigmoid(model(x[i : i + 64])).squeeze(1)
                tb = t[i : i + 64]
                loss = SIGN * (tb * torch.log(p) + (1 - tb) * torch.log(1 - p)).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
