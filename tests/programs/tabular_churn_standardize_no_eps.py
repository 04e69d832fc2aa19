"""A Kaggle-style churn classifier (Telco-customer-churn-like table: tenure, charges,
one-hot contract type, a few yes/no flags) built with pandas and `pd.get_dummies`, an MLP
trained with Adam and `BCEWithLogitsLoss`. The model standardises its own input with a
hand-written layer, `(x - x.mean(0)) / x.std(0)` over the batch, the way many notebooks
write a "BatchStandardize" / ActNorm-like layer (cf. vislearn/FrEIA#121 "ActNorm returns
NaN" on a constant channel, iKernels/transformers-lightning#17 "normalization with std =
0"). The planted bug: no epsilon in the division. The `filed_complaint` flag is rare (2%
of customers), so some batches of 64 hold no complaint at all: that column is constant
zero there, its std is exactly 0, and 0 / 0 makes NaN in `norm`'s output; the loss and,
after Adam's step, every weight follow. The healthy twin adds `+ 1e-5` to the std."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "non_finite", "cause": "numerical_instability", "module": "norm"}
EPS = 0.0  # the bug: the healthy twin sets 1e-5


class BatchStandardize(nn.Module):
    """Zero mean, unit variance per feature, from the batch's own statistics."""

    def __init__(self, eps: float = 0.0):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = x.std(0)
        if self.eps:  # the healthy twin's guard
            std = std + self.eps
        return (x - x.mean(0)) / std


class ChurnNet(nn.Module):
    def __init__(self, n_features: int, hidden: int = 64, eps: float = 0.0):
        super().__init__()
        self.norm = BatchStandardize(eps)
        self.fc1 = nn.Linear(n_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        x = self.dropout(torch.relu(self.fc1(x)))
        x = self.dropout(torch.relu(self.fc2(x)))
        return self.out(x).squeeze(1)


def load_customers(n: int = 2048, seed: int = 0) -> pd.DataFrame:
    """What `pd.read_csv("telco_churn.csv")` would give, made up in code."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 72, n)
    contract = rng.choice(["month-to-month", "one_year", "two_year"], n, p=[0.55, 0.25, 0.2])
    monthly = rng.normal(65, 30, n).clip(18, 120).round(2)
    df = pd.DataFrame(
        {
            "tenure": tenure,
            "MonthlyCharges": monthly,
            "TotalCharges": (monthly * tenure).round(2),
            "SeniorCitizen": (rng.random(n) < 0.16).astype(int),
            "PaperlessBilling": (rng.random(n) < 0.6).astype(int),
            "filed_complaint": (rng.random(n) < 0.02).astype(int),
            "Contract": contract,
        }
    )
    logit = (
        -1.0
        - 0.04 * (df["tenure"] - 30)
        + 0.02 * (df["MonthlyCharges"] - 65)
        + 1.2 * (df["Contract"] == "month-to-month")
        + 0.5 * df["SeniorCitizen"]
        + 2.0 * df["filed_complaint"]
    )
    df["Churn"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return df


def main(run_dir) -> None:
    torch.manual_seed(0)
    df = load_customers()
    df = pd.get_dummies(df, columns=["Contract"], dtype=float)
    features = [c for c in df.columns if c != "Churn"]
    X = torch.tensor(df[features].values, dtype=torch.float32)
    y = torch.tensor(df["Churn"].values, dtype=torch.float32)
    loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True, drop_last=True)

    model = ChurnNet(len(features), eps=EPS)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.BCEWithLogitsLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(5):
            model.train()
            running = 0.0
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
                running += loss.item()
