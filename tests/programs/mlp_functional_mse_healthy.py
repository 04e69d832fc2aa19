"""The healthy twin of `mlp_functional_mse_broadcast`: the target keeps its `[N, 1]` shape."""

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = None


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(512, 10)
    y = (x @ torch.randn(10) + 0.1 * torch.randn(512)).unsqueeze(1)  # [N, 1]
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(3):
            for i in range(0, len(x), 64):
                loss = F.mse_loss(model(x[i : i + 64]), y[i : i + 64])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
