"""The healthy twin of `finetune_frozen_fresh_backbone.py`: the backbone is pretrained
(trained on the task) before it is frozen, so the new head on its features trains well;
a deliberate freeze of pretrained weights is no finding."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = None
PRETRAIN_STEPS = 150  # the backbone was trained before the freeze


class Backbone(nn.Sequential):
    def __init__(self, d_in: int = 8, width: int = 128):
        super().__init__(
            nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(),
        )  # fmt: skip


class FineTuneModel(nn.Module):
    def __init__(self, num_labels: int = 4, width: int = 128):
        super().__init__()
        self.backbone = Backbone(width=width)
        self.classifier = nn.Linear(width, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))


def dataset(n: int = 512, classes: int = 4) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x @ torch.randn(8, classes, generator=g)).argmax(dim=1))


def pretrain(model: FineTuneModel, loader: DataLoader, steps: int) -> None:
    """Stands in for `model.backbone.load_state_dict(torch.load(...))`."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = iter(())
    for _ in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def main(run_dir) -> None:
    torch.manual_seed(0)
    loader = DataLoader(dataset(), batch_size=32, shuffle=False)
    model = FineTuneModel()
    pretrain(model, loader, PRETRAIN_STEPS)
    model.classifier = nn.Linear(128, 4)  # a new head for the downstream task
    for p in model.backbone.parameters():
        p.requires_grad = False
    optimizer = torch.optim.AdamW(
        (p for p in model.parameters() if p.requires_grad), lr=3e-4, weight_decay=0.01
    )
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(4):
            for x, y in loader:
                optimizer.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
