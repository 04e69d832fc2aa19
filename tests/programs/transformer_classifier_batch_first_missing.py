"""A sentence classifier in the PyTorch-tutorial style, written batch-first throughout:
`nn.Embedding` + sinusoidal positions over `[batch, seq, d]`, an
`nn.TransformerEncoder(nn.TransformerEncoderLayer(d_model, nhead))`, mean-pooled over the
sequence axis, a linear head. The bug (the many "forgot batch_first=True" threads,
issue 18 §2): the layer keeps its default `batch_first=False`, so it reads `[batch, seq,
d]` as `[seq, batch, d]` and self-attention runs across the sentences of the batch. The
shapes all fit; nothing raises."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {
    "symptom": "shape_mismatch",
    "cause": "batch_dim_mixing",
    "module": "encoder.layers.0.self_attn",
}
BATCH_FIRST = False  # the bug: the layer's default; True is what the code assumes


class PositionalEncoding(nn.Module):
    def __init__(self, d_model: int, max_len: int = 64):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(1, max_len, d_model)
        pe[0, :, 0::2] = torch.sin(pos * div)
        pe[0, :, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [batch, seq, d]
        return x + self.pe[:, : x.size(1)]


class TextClassifier(nn.Module):
    def __init__(self, vocab: int = 50, d_model: int = 32, nhead: int = 4, classes: int = 3):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d_model)
        self.pos_encoder = PositionalEncoding(d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=64, dropout=0.1, batch_first=BATCH_FIRST
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)
        self.d_model = d_model

    def forward(self, src: torch.Tensor) -> torch.Tensor:  # src: [batch, seq]
        x = self.pos_encoder(self.embedding(src) * math.sqrt(self.d_model))
        return self.head(self.encoder(x).mean(dim=1))


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (640,), generator=g)
    tokens = torch.randint(3, 50, (640, 12), generator=g)
    where = torch.randint(0, 12, (640,), generator=g)
    tokens[torch.arange(640), where] = labels  # one keyword per sentence names its class
    loader = DataLoader(TensorDataset(tokens, labels), batch_size=16, shuffle=True, generator=g)
    model = TextClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        model.train()
        for text, label in loader:
            optimizer.zero_grad()
            loss = criterion(model(text), label)
            loss.backward()
            optimizer.step()
