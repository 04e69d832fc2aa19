"""A classifier whose model ends in `nn.Softmax`, trained with `nn.CrossEntropyLoss`.

With Adam the loss still falls, slowly, so no flat-loss trigger fires; the loss's input
being probabilities is the bug on its own (issue 18 §6).
"""

import torch
from torch import nn

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "softmax_before_loss", "module": "classifier.2"}


class Classifier(nn.Module):
    def __init__(self, d_in=20, hidden=64, classes=5):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU())
        self.classifier = nn.Sequential(
            nn.Dropout(0.1), nn.Linear(hidden, classes), nn.Softmax(dim=1)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(640, 20)
    y = (x @ torch.randn(20, 5)).argmax(1)
    loader = [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(4):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                optimizer.step()
