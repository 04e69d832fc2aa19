"""A Kaggle-style tabular classifier (a customer-churn table): the rows are shuffled and
split 80/20 into train and validation, the features standardised, an MLP trained with
`nn.BCEWithLogitsLoss` and Adam over mini-batches, and the validation loss computed after
every epoch under `model.eval()` / `torch.no_grad()`. The bug (the "validation loss much
higher than training loss from the first epoch" threads): the scaler is fitted and
applied to the training features only (`X_train = (X_train - mean) / std`), the
validation features go to the model raw, in their own units (months, dollars, counts),
so the validation loss is far above the train loss from the first evaluation and never
follows it down. `SCALE_VAL = True` applies the training mean/std to both."""

from __future__ import annotations

import torch
from torch import nn

import trainlens

EXPECT = {"symptom": "overfitting", "cause": "bad_split", "module": None}
SCALE_VAL = False


def churn_table(n: int = 1000):
    """tenure (months), monthly and total charges ($), support calls, contract length
    (months), data used (GB); churn depends on them through a noisy logistic model."""
    g = torch.Generator().manual_seed(0)
    tenure = torch.rand(n, generator=g) * 72
    charges = 20 + torch.rand(n, generator=g) * 100
    calls = torch.poisson(torch.full((n,), 2.0), generator=g)
    contract = torch.tensor([1.0, 12.0, 24.0])[torch.randint(0, 3, (n,), generator=g)]
    data_gb = torch.rand(n, generator=g) * 50
    total = tenure * charges * (0.9 + 0.2 * torch.rand(n, generator=g))
    x = torch.stack([tenure, charges, total, calls, contract, data_gb], dim=1)
    z = (x - x.mean(0)) / x.std(0)
    logit = -1.2 * z[:, 0] + 0.8 * z[:, 1] + 1.0 * z[:, 3] - 0.9 * z[:, 4] + 0.2 * z[:, 5]
    y = (torch.rand(n, generator=g) < torch.sigmoid(2.0 * logit)).float()
    return x, y


def main(run_dir) -> None:
    torch.manual_seed(0)
    x, y = churn_table()
    perm = torch.randperm(len(x))
    cut = int(0.8 * len(x))
    x_train, y_train = x[perm[:cut]], y[perm[:cut]]
    x_val, y_val = x[perm[cut:]], y[perm[cut:]]
    mean, std = x_train.mean(dim=0), x_train.std(dim=0)
    x_train = (x_train - mean) / std
    if SCALE_VAL:
        x_val = (x_val - mean) / std  # the line the bug leaves out

    model = nn.Sequential(
        nn.Linear(6, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(12):
            model.train()
            order = torch.randperm(len(x_train))
            for i in range(0, len(x_train), 64):
                idx = order[i : i + 64]
                optimizer.zero_grad()
                loss = criterion(model(x_train[idx]).squeeze(1), y_train[idx])
                loss.backward()
                optimizer.step()
            model.eval()
            val_loss = 0.0
            with torch.no_grad():
                for i in range(0, len(x_val), 100):
                    out = model(x_val[i : i + 100]).squeeze(1)
                    val_loss += criterion(out, y_val[i : i + 100]).item()
