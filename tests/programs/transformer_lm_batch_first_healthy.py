"""Healthy twin of transformer_lm_seq_first_fed_batch_first_windows: the same LM built
with batch_first=True for its `get_batch` windows [batch, time]."""

import math

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = None
BATCH_FIRST = True


class PositionalEncoding(nn.Module):
    def __init__(self, d_model, max_len=64):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, 1, d_model)
        pe[:, 0, 0::2] = torch.sin(position * div_term)
        pe[:, 0, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x):  # [seq, batch, d] (or [batch, seq, d] when batch first)
        if BATCH_FIRST:
            return x + self.pe[: x.size(1)].transpose(0, 1)
        return x + self.pe[: x.size(0)]


class TransformerModel(nn.Module):
    def __init__(self, ntoken, d_model=32, nhead=2, d_hid=64, nlayers=1, dropout=0.1):
        super().__init__()
        self.pos_encoder = PositionalEncoding(d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, d_hid, dropout, batch_first=BATCH_FIRST)
        self.transformer_encoder = nn.TransformerEncoder(layer, nlayers, enable_nested_tensor=False)
        self.embedding = nn.Embedding(ntoken, d_model)
        self.linear = nn.Linear(d_model, ntoken)
        self.d_model = d_model
        self.init_weights()

    def init_weights(self):
        initrange = 0.1
        self.embedding.weight.data.uniform_(-initrange, initrange)
        self.linear.bias.data.zero_()
        self.linear.weight.data.uniform_(-initrange, initrange)

    def forward(self, src):
        n = src.size(1) if BATCH_FIRST else len(src)
        src_mask = nn.Transformer.generate_square_subsequent_mask(n)
        h = self.pos_encoder(self.embedding(src) * math.sqrt(self.d_model))
        return self.linear(self.transformer_encoder(h, src_mask, is_causal=True))


def get_batch(data, batch_size, block_size, g):
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=g)
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
    return x, y


def main(run_dir):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ntokens = 24
    data = torch.randint(0, ntokens, (4000,), generator=g)
    for i in range(2, len(data)):
        data[i] = (data[i - 1] + data[i - 2]) % ntokens
    model = TransformerModel(ntokens)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True) as lens:
        for _ in range(12):
            x, y = get_batch(data, 12, 16, g)
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, ntokens), y.view(-1))
            lens.log_loss(loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
