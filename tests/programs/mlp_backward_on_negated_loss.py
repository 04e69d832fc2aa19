"""A classifier whose step calls `(-loss).backward()`: copied from a GAN's minimax
generator, or from a log-likelihood the code once maximised, onto a loss that is to be
made smaller. Adam descends the negation faithfully, so the cross-entropy climbs."""

from __future__ import annotations

import torch
from torch import nn

import trainlens

EXPECT = {"symptom": "diverging", "cause": "gradient_ascent"}


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g)
    y = (x @ torch.randn(16, 5, generator=g)).argmax(1)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 5))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(6):
            for i in range(0, len(x), 32):
                loss = criterion(model(x[i : i + 32]), y[i : i + 32])
                optimizer.zero_grad()
                (-loss).backward()  # the bug: this maximises the loss
                optimizer.step()


if __name__ == "__main__":
    main("runs/mlp_backward_on_negated_loss")
