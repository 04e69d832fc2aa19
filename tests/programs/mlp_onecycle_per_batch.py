"""Healthy: OneCycleLR is meant to be stepped every batch (total_steps = epochs * batches);
its lr ends four orders of magnitude below its peak."""

import torch
from torch import nn

import trainlens

EXPECT = None
PER_BATCH = True  # False: mlp_cosine_annealing_per_epoch's CosineAnnealingLR, per epoch


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(384, 12)
    y = (x @ torch.randn(12, 3)).argmax(1)
    loader = [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]
    model = nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 3))
    epochs = 6
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if PER_BATCH:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=0.2, epochs=epochs, steps_per_epoch=len(loader)
        )
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=epochs - 1, eta_min=0.0
        )
    loss_fn = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(epochs):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss_fn(model(xb), yb).backward()
                optimizer.step()
                if PER_BATCH:
                    scheduler.step()
            if not PER_BATCH:
                scheduler.step()
