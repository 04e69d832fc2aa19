"""A planted problem: a wide MLP memorises a tiny, noisy training set.

32 training samples with noisy targets, a 128-unit MLP and Adam: the train loss falls
towards zero while the validation loss, after its best point early on, climbs. trainlens
names the best validation step, which is where training should have stopped.

    python examples/overfitting.py
"""

from __future__ import annotations

import torch
from torch import nn

import trainlens


def main(run_dir: str | None = None) -> trainlens.Lens:
    torch.manual_seed(0)
    w = torch.randn(10, 1)

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 10)
        return x, x @ w + 3.0 * torch.randn(n, 1)  # noisy targets

    x, y = data(32)  # far too few samples for this model
    xv, yv = data(256)
    model = nn.Sequential(nn.Linear(10, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 1))  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.MSELoss()

    with trainlens.watch(model, optimizer, run_dir=run_dir) as lens:
        for epoch in range(80):
            model.train()
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if epoch % 4 == 3:
                model.eval()
                with torch.no_grad():
                    val = loss_fn(model(xv), yv)  # eval mode, no grad: recorded as "val"
        print(f"train loss {loss.item():.3f}, val loss {val.item():.3f}")
    return lens


if __name__ == "__main__":
    main()
