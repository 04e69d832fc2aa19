"""A Kaggle House-Prices-style regression script: a pandas DataFrame as `pd.read_csv`
gives it (numeric columns, empty cells read as NaN: `LotFrontage` is missing for ~17% of
the houses, `GarageYrBlt` for the houses without a garage), a z-score of the features done
in pandas (`(df - df.mean()) / df.std()` skips NaN and keeps it), the log price as target,
`torch.tensor(df[features].values, dtype=torch.float32)` into a `TensorDataset`, a small MLP
with Adam and `MSELoss`. The planted bug: the `fillna` / imputation step is forgotten, so
NaN rows reach the model; the first batch already holds some, the loss is NaN from step 0
and Adam's first step turns every weight NaN. The healthy twin fills the missing cells
with the column median before standardising."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "non_finite", "cause": "bad_input_data", "module": None}
IMPUTE = False

FEATURES = [
    "LotArea",
    "LotFrontage",
    "OverallQual",
    "YearBuilt",
    "GrLivArea",
    "FullBath",
    "GarageCars",
    "GarageYrBlt",
]


def read_houses(n: int = 1460, seed: int = 0) -> pd.DataFrame:
    """What `pd.read_csv("train.csv")` would give, made up in code."""
    rng = np.random.default_rng(seed)
    qual = rng.integers(1, 11, n)
    year = rng.integers(1880, 2010, n)
    area = rng.normal(1500, 500, n).clip(400, 5000).round()
    garage = rng.choice([0, 1, 2, 3], n, p=[0.06, 0.25, 0.56, 0.13])
    df = pd.DataFrame(
        {
            "Id": np.arange(1, n + 1),
            "LotArea": rng.lognormal(9.1, 0.4, n).round(),
            "LotFrontage": rng.normal(70, 22, n).clip(21, 300).round(),
            "OverallQual": qual,
            "YearBuilt": year,
            "GrLivArea": area,
            "FullBath": rng.integers(1, 4, n),
            "GarageCars": garage,
            "GarageYrBlt": np.maximum(year + rng.integers(0, 20, n), year).astype(float),
        }
    )
    log_price = (
        10.5
        + 0.12 * qual
        + 0.0004 * area
        + 0.003 * (year - 1950)
        + 0.05 * garage
        + rng.normal(0, 0.12, n)
    )
    df["SalePrice"] = np.exp(log_price).round(-2)
    # empty cells in the csv: read_csv turns them into NaN
    df.loc[rng.random(n) < 0.17, "LotFrontage"] = np.nan
    df.loc[df["GarageCars"] == 0, "GarageYrBlt"] = np.nan
    return df


def main(run_dir) -> None:
    torch.manual_seed(0)
    df = read_houses()
    if IMPUTE:
        df[FEATURES] = df[FEATURES].fillna(df[FEATURES].median())
    df[FEATURES] = (df[FEATURES] - df[FEATURES].mean()) / df[FEATURES].std()
    target = np.log(df["SalePrice"])
    target = (target - target.mean()) / target.std()

    X = torch.tensor(df[FEATURES].values, dtype=torch.float32)
    y = torch.tensor(target.values, dtype=torch.float32).unsqueeze(1)
    train_loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)

    model = nn.Sequential(
        nn.Linear(len(FEATURES), 64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 1),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    criterion = nn.MSELoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(10):
            model.train()
            epoch_loss = 0.0
            for xb, yb in train_loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
                epoch_loss += loss.item() * len(xb)
