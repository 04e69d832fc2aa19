"""SimCLR-style contrastive pre-training (the NT-Xent loss as the SimCLR and MoCo
repositories write it): an encoder with BatchNorm and a projection head embed two noisy
views of each sample; the model returns the `[2N, 2N]` cosine-similarity logits over the
batch, its diagonal masked with -inf, and cross-entropy picks each view's partner.

Healthy: every row of those logits compares a sample with every other sample on purpose,
so the batch-dependency check sees samples mix; that is the method, not a bug (a wrong
`batch_dim_mixing` error here was found on code written this way)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = None


class SimCLR(nn.Module):
    def __init__(self, features: int = 32, temperature: float = 0.5):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(features, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 64)
        )
        self.projector = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))
        self.temperature = temperature

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.projector(self.encoder(torch.cat([view1, view2]))), dim=1)
        logits = z @ z.t() / self.temperature
        self_pairs = torch.eye(len(z), dtype=torch.bool, device=z.device)
        return logits.masked_fill(self_pairs, float("-inf"))


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    scale = 1 + 0.1 * torch.randn(x.shape, generator=g)
    return x * scale + 0.1 * torch.randn(x.shape, generator=g)


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    data = torch.randn(1024, 32)
    model = SimCLR()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(3):
            order = torch.randperm(len(data))
            for i in range(0, len(data), 128):
                x = data[order[i : i + 128]]
                logits = model(augment(x, g), augment(x, g))
                n = len(x)
                partners = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
                loss = F.cross_entropy(logits, partners)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
