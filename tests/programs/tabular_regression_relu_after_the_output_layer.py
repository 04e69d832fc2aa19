"""A tabular-regression script whose MLP is built by a helper that puts a ReLU after every
Linear, the output layer's too. The targets (house prices) are standardised, so about half
of them are negative, and the model can only predict 0 or more: the loss falls, then stops
at what those targets cost. Planted bug: the activation after the output layer (the
healthy twin builds the same MLP without it)."""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "bounded_output", "module": "5"}
LAST_RELU = True


def make_data(n: int = 1500) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    area = torch.rand(n, 1, generator=g) * 200 + 40  # m^2
    rooms = torch.randint(1, 7, (n, 1), generator=g).float()
    age = torch.rand(n, 1, generator=g) * 80
    price = 1500 * area + 8000 * rooms - 900 * age + 60000
    price = price + 15000 * torch.randn(n, 1, generator=g)
    x = torch.cat([area, rooms, age], dim=1)
    return (x - x.mean(0)) / x.std(0), (price - price.mean()) / price.std()


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    if not LAST_RELU:
        layers = layers[:-1]
    return nn.Sequential(*layers)


def main(run_dir) -> None:
    torch.manual_seed(0)
    x, y = make_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    model = mlp([3, 64, 64, 1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.MSELoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _ in range(10):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
