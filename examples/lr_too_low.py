"""A planted bug: a learning rate a million times too small, so the loss never moves.

A small MLP learns a 4-class problem with SGD at lr 1e-6. Every step changes the weights
by about a millionth of their size (healthy is ~1e-3), so after 60 steps the loss is where
it started, near ln(4). trainlens names the update/param ratio and the fix.

    python examples/lr_too_low.py
"""

from __future__ import annotations

import torch
from torch import nn

import trainlens


def main(run_dir: str | None = None) -> trainlens.Lens:
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, :2] > 0).long() @ torch.tensor([1, 2])  # 4 classes from two signs
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)  # BUG: ~1e-1 is right here
    loss_fn = nn.CrossEntropyLoss()

    with trainlens.watch(model, optimizer, run_dir=run_dir) as lens:
        for _ in range(15):
            for i in range(0, 256, 64):
                loss = loss_fn(model(x[i : i + 64]), y[i : i + 64])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        print(f"loss after 60 steps {loss.item():.4f} (ln 4 = 1.386)")
    return lens


if __name__ == "__main__":
    main()
