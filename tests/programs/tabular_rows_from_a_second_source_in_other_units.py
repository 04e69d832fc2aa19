"""A tabular classifier whose table was merged from two sources: one in three hundred
rows came from a system that stores amounts in cents, not in thousands, and the loading
standardised the columns with statistics computed on the first source only. Those rows
hold values around a thousand times the rest; most batches look fine, and the first
batches with one of them throw the weights so far that the ReLUs die: the loss spikes,
then sits flat at ln 3 for the rest of the run."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "unnormalized_input", "module": "0"}
SECOND_SOURCE_SCALE = 1000.0  # the healthy twin converts those rows first


def _table(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 12, generator=g)
    y = (x @ torch.randn(12, 3, generator=g)).argmax(1)
    second = torch.arange(n) % 97 == 5  # the rows of the second source
    x[second] *= SECOND_SOURCE_SCALE
    return x, y


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = _table(2048, g)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)
    model = nn.Sequential(
        nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(3):
            for xb, yb in loader:
                loss = criterion(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()


if __name__ == "__main__":
    main("runs/tabular_rows_from_a_second_source_in_other_units")
