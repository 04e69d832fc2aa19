"""A planted bug: a learning rate far too high, so the loss grows instead of falling.

Linear regression on features of scale ~3 with SGD at lr 0.13: each step overshoots the
minimum by more than it corrects, so the loss grows by orders of magnitude in 40 steps
(while staying finite). trainlens names the rising loss and the huge update/param ratio.

    python examples/diverging.py
"""

from __future__ import annotations

import torch
from torch import nn

import trainlens


def main(run_dir: str | None = None) -> trainlens.Lens:
    torch.manual_seed(0)
    x = 3 * torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.13)  # BUG: SGD is stable below ~0.11 here
    loss_fn = nn.MSELoss()

    with trainlens.watch(model, optimizer, run_dir=run_dir) as lens:
        for step in range(40):
            i = (step % 4) * 64
            loss = loss_fn(model(x[i : i + 64]), y[i : i + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"loss after 40 steps {loss.item():.3g}")
    return lens


if __name__ == "__main__":
    main()
