"""Healthy overfit-one-batch factories: each can memorise its batch of 16."""

from __future__ import annotations

import torch
from torch import nn

import trainlens


def _classes(n: int = 16, d: int = 8, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def mlp() -> trainlens.Setup:
    torch.manual_seed(0)
    x, y = _classes()
    model = nn.Sequential(
        nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )
    return trainlens.Setup(model=model, batch=(x, y), loss_fn=nn.CrossEntropyLoss())


def cnn() -> dict:
    """A dict works as well as a Setup; BatchNorm mixes samples in train mode, legitimately."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 4),
    )  # fmt: skip
    return {"model": model, "batch": (x, y), "loss_fn": nn.CrossEntropyLoss()}


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 20, d_model: int = 32, classes: int = 4, seq: int = 10):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(seq, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.out = nn.Linear(d_model, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(ids) + self.pos[: ids.shape[1]])
        return self.out(h.mean(dim=1))


def transformer() -> trainlens.Setup:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 20, (16, 10), generator=g)
    y = torch.randint(0, 4, (16,), generator=g)
    model = TinyTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    return trainlens.Setup(
        model=model, batch=(ids, y), loss_fn=nn.CrossEntropyLoss(), optimizer=opt
    )


def regression() -> trainlens.Setup:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g)
    y = torch.sin(x.sum(1, keepdim=True))
    model = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return trainlens.Setup(model=model, batch=(x, y), loss_fn=nn.MSELoss(), optimizer=opt)
