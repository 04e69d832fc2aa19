"""Small real models and a plain training loop the tests share."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import trainlens


def mlp(d_in: int = 8, hidden: int = 32, d_out: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, d_out),
    )  # fmt: skip


class SmallCNN(nn.Module):
    def __init__(self, channels: int = 3, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyTransformer(nn.Module):
    """A 2-layer encoder classifier over token ids."""

    def __init__(self, vocab: int = 20, d_model: int = 32, classes: int = 4, seq: int = 12):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(seq, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.out = nn.Linear(d_model, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(ids) + self.pos[: ids.shape[1]])
        return self.out(h.mean(dim=1))


def classification_data(n: int = 64, d_in: int = 8, classes: int = 3, seed: int = 0):
    """Linearly separable-ish classes: a model can learn them in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    w = torch.randn(d_in, classes, generator=g)
    return x, (x @ w).argmax(dim=1)


def image_data(n: int = 32, channels: int = 3, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, channels, 8, 8, generator=g) * 0.5
    x[:, 0] += y.view(-1, 1, 1).float()  # the class shows in the first channel
    return x, y


def token_data(n: int = 32, seq: int = 12, vocab: int = 20, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq), generator=g)
    return ids, ids[:, 0] % classes


def train(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int = 30,
    lr: float = 1e-2,
    batch: int = 16,
    loss_fn: nn.Module | None = None,
    optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    watch: bool = True,
    run_dir: Path | None = None,
    **watch_kwargs: Any,
) -> trainlens.Lens | None:
    """The loop a user writes: mini-batches, zero_grad/backward/step, eval each 10 steps."""
    x, y = data
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    opt = optimizer(model.parameters(), lr=lr)
    lens = (
        trainlens.watch(model, opt, run_dir=run_dir, quiet=True, **watch_kwargs) if watch else None
    )
    with lens if lens is not None else contextlib.nullcontext():
        for step in range(steps):
            i = (step * batch) % len(x)
            xb, yb = x[i : i + batch], y[i : i + batch]
            model.train()
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if val is not None and step % 10 == 9:
                model.eval()
                with torch.no_grad():
                    loss_fn(model(val[0]), val[1])
    return lens


def fit_epochs(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: tuple[torch.Tensor, torch.Tensor],
    run_dir: Path,
    *,
    epochs: int,
    batch: int = 32,
    loss: str = "cross_entropy",
) -> trainlens.Lens:
    """The epoch loop of a course exercise under `watch`: batches in stored order, the
    loss called as `F.<loss>(...)` inside the block, as users write it (a function bound
    before the block is the unwrapped one)."""
    x, y = data
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(epochs):
            for i in range(0, len(x), batch):
                loss_fn = getattr(nn.functional, loss)
                out = loss_fn(model(x[i : i + batch]), y[i : i + batch])
                opt.zero_grad()
                out.backward()
                opt.step()
    return lens
