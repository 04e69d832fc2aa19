"""An old-style deep fully connected classifier (the "deeper is better" MLP of pre-2012
tutorials: ten `nn.Linear` + `nn.Sigmoid` hidden layers of 64 units built in a loop into
an `nn.Sequential`, PyTorch's default Linear init, CrossEntropyLoss, plain SGD, a
DataLoader over a synthetic 8-class data set). The bug is the architecture itself, from
"my deep network does not learn / loss stuck at 2.08" threads: every sigmoid scales the
backward signal by at most 0.25, so the gradient that reaches the first layers is ~1e-9 of
the output layer's, and the signal forward washes out just as fast. The loss sits at
ln(8) from the first epoch to the last. `SIGMOID = False` is the fix such threads are
given: Linear -> BatchNorm1d -> ReLU with Kaiming init, same depth and width."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "vanishing_gradient", "module": "net.0"}
SIGMOID = True  # the bug; False builds the BatchNorm + ReLU stack


class DeepMLP(nn.Module):
    def __init__(self, d_in=32, width=64, n_hidden=10, n_classes=8, sigmoid=True):
        super().__init__()
        layers = []
        for i in range(n_hidden):
            layers.append(nn.Linear(d_in if i == 0 else width, width))
            if sigmoid:
                layers.append(nn.Sigmoid())
            else:
                layers += [nn.BatchNorm1d(width), nn.ReLU()]
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)
        if not sigmoid:
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


def make_data(n=2048, d_in=32, n_classes=8):
    """Eight Gaussian clusters in 32 dimensions, unit-scale features."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(n_classes, d_in, generator=g)
    y = torch.randint(0, n_classes, (n,), generator=g)
    x = centers[y] + 0.8 * torch.randn(n, d_in, generator=g)
    return x, y


def main(run_dir) -> None:
    torch.manual_seed(0)
    x, y = make_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    model = DeepMLP(sigmoid=SIGMOID)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(5):
            model.train()
            for inputs, targets in loader:
                optimizer.zero_grad()
                loss = criterion(model(inputs), targets)
                loss.backward()
                optimizer.step()
