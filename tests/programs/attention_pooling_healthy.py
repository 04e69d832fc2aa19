"""Healthy: attention pooling over a set (one learned query scores every element with a
`bmm`, softmax over the elements): a pooling weight, not attention between queries and
keys, and not to be judged as such."""

import math

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = None


class AttentionPool(nn.Module):
    def __init__(self, d_in=8, d=32, classes=4):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d_in, d), nn.Tanh())
        self.query = nn.Parameter(torch.randn(1, 1, d) / math.sqrt(d))
        self.out = nn.Linear(d, classes)

    def forward(self, x):  # [B, N, d_in]
        h = self.enc(x)
        scores = torch.bmm(self.query.expand(x.size(0), -1, -1), h.transpose(1, 2))
        w = F.softmax(scores / math.sqrt(h.size(-1)), dim=-1)  # [B, 1, N]
        return self.out(torch.bmm(w, h).squeeze(1))


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(512, 7, 8)
    y = x.max(1).values[:, :4].argmax(-1)
    model = AttentionPool()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True) as lens:
        for _epoch in range(6):
            for i in range(0, len(x), 32):
                loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
                lens.log_loss(loss)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
