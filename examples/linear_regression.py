"""The first loop of every course: `nn.Linear(1, 1)` learns `y = 2x`.

SGD with lr 0.1 for 20 epochs, watched by trainlens. A healthy run: the drill has no
findings and the learned weight is close to 2.

    python examples/linear_regression.py
"""

from __future__ import annotations

import torch
from torch import nn

import trainlens


def main(run_dir: str | None = None) -> trainlens.Lens:
    torch.manual_seed(0)
    x = torch.randn(100, 1)
    y = 2 * x
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=10, shuffle=True
    )

    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.MSELoss()

    with trainlens.watch(model, optimizer, run_dir=run_dir) as lens:
        for epoch in range(20):
            for xb, yb in loader:
                loss = loss_fn(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if epoch % 5 == 4:
                print(f"epoch {epoch + 1:2d}  loss {loss.item():.2e}")

    print(f"learned weight {model.weight.item():.4f} (target 2), bias {model.bias.item():.4f}")
    return lens


if __name__ == "__main__":
    main()
