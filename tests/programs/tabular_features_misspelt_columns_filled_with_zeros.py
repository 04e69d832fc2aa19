"""A tabular classifier whose feature columns are picked from a DataFrame by names that no
longer match the file (the export renamed `Age` to `age`): `df.reindex(columns=...)`
returns the missing columns as NaN, and the `fillna(0.0)` meant for a few missing cells
turns every feature into 0. The model sees the same all-zero row for every sample: the
first layer's weights get no gradient (their input is zero) and the loss sits at the level
of predicting the class prior. The drill must name the input, not a cut graph."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "unnormalized_input", "module": "net.0"}
#: the names the training script asks for; the healthy twin uses the file's own
FEATURES = ["Age", "Income", "Tenure", "Visits"]


def _table(n: int, rng: np.random.Generator) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "age": rng.normal(0, 1, n),
            "income": rng.normal(0, 1, n),
            "tenure": rng.normal(0, 1, n),
            "visits": rng.normal(0, 1, n),
        }
    )
    score = 1.5 * df["age"] - df["income"] + 0.8 * df["tenure"] * df["visits"]
    df["plan"] = np.digitize(score, [-1.0, 1.0])  # three plans
    df.loc[rng.random(n) < 0.02, "income"] = np.nan  # a few missing cells
    return df


class Net(nn.Module):
    def __init__(self, d_in: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def main(run_dir) -> None:
    torch.manual_seed(0)
    df = _table(1536, np.random.default_rng(0))
    features = df.reindex(columns=FEATURES).fillna(0.0).to_numpy(dtype=np.float32)
    x = torch.from_numpy(features)
    y = torch.from_numpy(df["plan"].to_numpy())
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=g)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(5):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
