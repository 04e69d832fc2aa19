"""Healthy: a token-level mixture of experts whose router takes a softmax over experts
(top-2 of `(x @ w_gate).softmax(-1)`) plus a softmax gate over dense experts: softmaxes
over the last axis that are not attention, and must not be judged as attention."""

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = None


class SparseMoE(nn.Module):
    def __init__(self, d=16, n_experts=4, k=2):
        super().__init__()
        self.w_gate = nn.Parameter(torch.randn(d, n_experts) * 0.1)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, d)) for _ in range(n_experts)
        )
        self.k = k

    def forward(self, x):  # [B, T, d]
        probs = (x @ self.w_gate).softmax(-1)  # [B, T, E]
        top, idx = probs.topk(self.k, dim=-1)
        top = top / top.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            weight = (top * (idx == e)).sum(-1, keepdim=True)
            out = out + weight * expert(x)
        return out


class Model(nn.Module):
    def __init__(self, d_in=8, d=16, classes=4):
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.moe = SparseMoE(d)
        self.gate = nn.Linear(d, 3)
        self.heads = nn.ModuleList(nn.Linear(d, classes) for _ in range(3))

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = (h + self.moe(h)).mean(1)  # pool the set
        w = F.softmax(self.gate(h), dim=-1)  # [B, 3]: a gate over dense heads
        outs = torch.stack([head(h) for head in self.heads], dim=1)
        return (w.unsqueeze(-1) * outs).sum(1)


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(512, 6, 8)
    y = x.sum(1)[:, :4].argmax(-1)
    model = Model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(3):
            for i in range(0, len(x), 32):
                loss = criterion(model(x[i : i + 32]), y[i : i + 32])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
