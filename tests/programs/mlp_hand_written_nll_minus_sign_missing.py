"""A classifier's negative log-likelihood written by hand, its minus left out:
`loss = logp.gather(1, y).mean()` is the log-likelihood itself. It is below zero from the
first step, and the optimizer drives it down without end by making the right classes
ever less likely (the loss looks like it is learning). The healthy twin is
`mlp_hand_written_loss_healthy.py`, with the minus."""

import torch
from torch import nn

import trainlens

EXPECT = {"symptom": "diverging", "cause": "loss_unbounded_below"}


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(512, 12)
    y = (x @ torch.randn(12, 4)).argmax(1)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(10):
            for i in range(0, len(x), 32):
                logp = torch.log_softmax(model(x[i : i + 32]), dim=1)
                loss = logp.gather(1, y[i : i + 32, None]).mean()  # the bug: no minus
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
