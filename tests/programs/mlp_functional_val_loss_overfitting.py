"""A wide MLP fitted to 16 noisy samples; train and validation losses both `F.mse_loss`.

The validation loss is computed in eval mode under `no_grad` with the function: it is
recorded as "val", so the overfitting (validation rising after its best step) is seen.
"""

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "overfitting", "cause": "overfitting", "module": None}


def main(run_dir):
    torch.manual_seed(0)
    w = torch.randn(4, 1)
    x_train = torch.randn(16, 4)
    y_train = x_train @ w + 2.0 * torch.randn(16, 1)
    x_val = torch.randn(64, 4)
    y_val = x_val @ w + 2.0 * torch.randn(64, 1)
    model = nn.Sequential(
        nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for step in range(150):
            model.train()
            loss = F.mse_loss(model(x_train), y_train)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 10 == 9:
                model.eval()
                with torch.no_grad():
                    F.mse_loss(model(x_val), y_val)
