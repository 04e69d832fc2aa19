"""A course-style tabular regression whose targets come from one column (`df["y"].values`,
shape [N]) and whose loss is written by hand, `((pred - y) ** 2).mean()`, on the model's
[N, 1] output: the difference broadcasts to [N, N] without a warning (only `nn.MSELoss`
warns), so every prediction is compared with every target and the model learns the mean."""

import torch
from torch import nn

import trainlens

EXPECT = {"symptom": "shape_mismatch", "cause": "loss_target_shape_mismatch"}
TARGET_COLUMN_2D = False  # the planted bug; True keeps the target [N, 1]


def main(run_dir):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1024, 6, generator=g)
    column = features @ torch.tensor([1.5, -2.0, 0.5, 0.0, 1.0, -0.5]) + 0.1 * torch.randn(
        1024, generator=g
    )
    target = column[:, None] if TARGET_COLUMN_2D else column
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(8):
            perm = torch.randperm(len(features), generator=g)
            for i in range(0, len(features), 64):
                idx = perm[i : i + 64]
                pred = model(features[idx])
                loss = ((pred - target[idx]) ** 2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
