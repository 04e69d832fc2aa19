"""Healthy twin of annotated_attention_no_scale: the annotated-transformer-style encoder
with its free function `attention(...)` scaled by 1/sqrt(d_k); recognised, and clean."""

import math

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = None
SCALED = True
STEPS = 30


def attention(query, key, value, mask=None, dropout=None):
    d_k = query.size(-1)
    scores = torch.matmul(query, key.transpose(-2, -1))
    if SCALED:
        scores = scores / math.sqrt(d_k)
    if mask is not None:
        scores = scores.masked_fill(mask == 0, -1e9)
    p_attn = scores.softmax(dim=-1)
    if dropout is not None:
        p_attn = dropout(p_attn)
    return torch.matmul(p_attn, value), p_attn


class MultiHeadedAttention(nn.Module):
    def __init__(self, h, d_model, dropout=0.1):
        super().__init__()
        self.d_k, self.h = d_model // h, h
        self.linears = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(4))
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, query, key, value, mask=None):
        if mask is not None:
            mask = mask.unsqueeze(1)
        nbatches = query.size(0)
        query, key, value = [
            lin(x).view(nbatches, -1, self.h, self.d_k).transpose(1, 2)
            for lin, x in zip(self.linears, (query, key, value), strict=False)
        ]
        x, _ = attention(query, key, value, mask=mask, dropout=self.dropout)
        x = x.transpose(1, 2).contiguous().view(nbatches, -1, self.h * self.d_k)
        return self.linears[-1](x)


class EncoderLayer(nn.Module):
    def __init__(self, d_model, h):
        super().__init__()
        self.self_attn = MultiHeadedAttention(h, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.feed_forward = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.ReLU(),
                                          nn.Linear(4 * d_model, d_model))  # fmt: skip

    def forward(self, x, mask):
        y = self.norm1(x)
        x = x + self.self_attn(y, y, y, mask)
        return x + self.feed_forward(self.norm2(x))


class Tagger(nn.Module):
    def __init__(self, vocab=16, d_model=64, h=2, n=1, max_len=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * -(math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0))
        self.layers = nn.ModuleList(EncoderLayer(d_model, h) for _ in range(n))
        self.norm = nn.LayerNorm(d_model)
        self.generator = nn.Linear(d_model, vocab)
        self.d_model = d_model
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, src_mask):
        x = self.embed(src) * math.sqrt(self.d_model) + self.pe[:, : src.size(1)]
        for layer in self.layers:
            x = layer(x, src_mask)
        return self.generator(self.norm(x))


def main(run_dir):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(1, 16, (512, 16), generator=g)
    lengths = torch.randint(8, 17, (512,), generator=g)
    pad = torch.arange(16)[None, :] >= lengths[:, None]
    src = src.masked_fill(pad, 0)
    tgt = src[:, :1].expand(-1, 16).masked_fill(pad, -100)  # tag: the sequence's first token
    model = Tagger()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True) as lens:
        for step in range(STEPS):
            i = (step * 16) % len(src)
            s_b, t_b = src[i : i + 16], tgt[i : i + 16]
            out = model(s_b, (s_b != 0).unsqueeze(-2))
            loss = F.cross_entropy(out.view(-1, out.size(-1)), t_b.reshape(-1), ignore_index=-100)
            lens.log_loss(loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
