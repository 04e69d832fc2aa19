"""Single-head causal self-attention written from scratch, the way a course's first
attention exercise writes it, on [B, T, T] scores: `F.softmax(scores, dim=1)`. On 3-d
scores dim=1 is the queries, so each key's column sums to 1 and, under the causal mask,
a position draws on the positions after it. Planted bug: the softmax axis (dim=-1 is the
keys, the healthy twin)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {
    "symptom": "confusing_attention",
    "cause": "softmax_over_queries",
    "module": "attn",
}
SOFTMAX_DIM = 1  # the planted bug; -1 in the healthy twin


class SelfAttention(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query(x), self.key(x), self.value(x)
        scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(x.size(-1))
        t = x.size(1)
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
        scores = scores.masked_fill(~causal, float("-inf"))
        weights = F.softmax(scores, dim=SOFTMAX_DIM)
        return torch.bmm(weights, v)


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 12, d: int = 32, block: int = 16):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.attn = SelfAttention(d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tok(idx) + self.pos(torch.arange(idx.size(1)))
        h = h + self.attn(h)
        return self.head(h + self.ff(h))


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 12, (2000,), generator=g)
    for i in range(3, len(data)):  # the next token follows from the one three back
        data[i] = (data[i - 3] + 2) % 12
    model = TinyLM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
        for _ in range(40):
            ix = torch.randint(0, len(data) - 17, (16,), generator=g)
            x = torch.stack([data[i : i + 16] for i in ix])
            y = torch.stack([data[i + 1 : i + 17] for i in ix])
            loss = F.cross_entropy(model(x).reshape(-1, 12), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
