"""A residual MLP whose blocks are built with a list comprehension and stored as a plain
Python list (`self.blocks = [Block(...) for _ in range(depth)]`), the way one writes it
before meeting `nn.ModuleList`. The blocks run in every forward, but they are not
submodules: `model.parameters()` does not list their weights, the optimizer never moves
them, and only the input and output layers learn around a fixed random middle."""

from __future__ import annotations

import torch
from torch import nn

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "params_not_in_optimizer"}
MODULE_LIST = False  # the healthy twin wraps the list in nn.ModuleList


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.relu(self.fc(self.norm(h)))


class ResidualMLP(nn.Module):
    def __init__(self, d_in: int, width: int, classes: int, depth: int = 4):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        blocks = [Block(width) for _ in range(depth)]
        self.blocks = nn.ModuleList(blocks) if MODULE_LIST else blocks  # the bug: a plain list
        self.out = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.out(h)


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 16, generator=g)
    # a target the input layer alone cannot fit: it needs the blocks' non-linearity
    y = ((x[:, :4] ** 2).sum(1) > 4).long() + 2 * (x[:, 4] * x[:, 5] > 0).long()
    model = ResidualMLP(16, 64, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(8):
            for i in range(0, len(x), 64):
                loss = criterion(model(x[i : i + 64]), y[i : i + 64])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()


if __name__ == "__main__":
    main("runs/resnet_style_blocks_in_a_plain_list")
