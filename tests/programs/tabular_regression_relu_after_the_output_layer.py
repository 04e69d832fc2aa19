"""A tabular-regression script whose MLP is built by a helper that puts a ReLU after every
Linear, the output layer's too. The targets (house prices) are standardised, so about half
of them are negative, and the model can only predict 0 or more: the loss falls, then stops
at what those targets cost. Planted bug: the activation after the output layer (the
healthy twin builds the same MLP without it)."""

from __future__ import annotations

import itertools

import torch
from _sibling import sibling
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "bounded_output", "module": "5"}
LAST_RELU = True


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The house prices of `tabular_regression_raw_prices.py`, standardised."""
    x, price = sibling("tabular_regression_raw_prices.py").make_data()
    return x, (price - price.mean()) / price.std()


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
