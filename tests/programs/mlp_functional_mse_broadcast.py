"""A regression MLP whose `[N, 1]` output meets a `[N]` target in `F.mse_loss`.

The loss broadcasts to `[N, N]` (only a UserWarning) and training goes on, wrong.
"""

import warnings

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "shape_mismatch", "cause": "loss_target_shape_mismatch", "module": None}


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(512, 10)
    y = x @ torch.randn(10) + 0.1 * torch.randn(512)  # [N]
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
            for _epoch in range(3):
                for i in range(0, len(x), 64):
                    pred = model(x[i : i + 64])
                    loss = F.mse_loss(pred, y[i : i + 64])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
