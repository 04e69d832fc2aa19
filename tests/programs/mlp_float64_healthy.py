"""A scientific-computing regression in double precision, the way physics and PDE-surrogate
code is written: `torch.set_default_dtype` left alone, the model cast with `.double()`,
float64 data, an Adam loop with a StepLR per epoch.
Healthy: trainlens must run it clean (a float64 model once crashed a probe)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = None


class Surrogate(nn.Module):
    def __init__(self, d_in: int = 4, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
            nn.Linear(width, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1024, 4, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.sin(3 * x[:, 0]) * torch.cos(2 * x[:, 1]) + 0.5 * x[:, 2] * x[:, 3]
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=g)
    model = Surrogate().double()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    criterion = nn.MSELoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(8):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
            scheduler.step()
