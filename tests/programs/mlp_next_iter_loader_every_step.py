"""A classifier trained step by step (`for step in range(...)`) that takes each batch with
`xb, yb = next(iter(train_loader))`: a new iterator every step, and a loader that does not
shuffle (the data was "shuffled once" when it was made) starts at the same first batch
every time. The model sees 32 of its 1024 samples, memorises them, and validation gets
worse while the training loss falls to zero."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "overfitting", "cause": "same_batch_every_step"}
KEEP_ITERATOR = False  # a healthy twin keeps one iterator and restarts it when it runs out
SHUFFLE = False  # a healthy twin shuffles: each fresh iterator starts at a random batch


def _data(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 20, generator=g)
    w = torch.randn(20, 4, generator=g)
    y = (x @ w + 0.8 * torch.randn(n, 4, generator=g)).argmax(1)
    return x, y


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = _data(1024 + 256, g)
    train = TensorDataset(x[:1024], y[:1024])
    train_loader = DataLoader(train, batch_size=32, shuffle=SHUFFLE, generator=g)
    val_loader = DataLoader(TensorDataset(x[1024:], y[1024:]), batch_size=128)
    model = nn.Sequential(
        nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    batches = iter(train_loader)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for step in range(400):
            model.train()
            if KEEP_ITERATOR:
                try:
                    xb, yb = next(batches)
                except StopIteration:
                    batches = iter(train_loader)
                    xb, yb = next(batches)
            else:
                xb, yb = next(iter(train_loader))  # the bug (without shuffling): batch 0
            loss = criterion(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 40 == 39:
                model.eval()
                with torch.no_grad():
                    for xv, yv in val_loader:
                        criterion(model(xv), yv)


if __name__ == "__main__":
    main("runs/mlp_next_iter_loader_every_step")
