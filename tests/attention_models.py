"""Small attention models the attention tests and the healthy suite share.

`TinyGPT` is nanoGPT in miniature: hand-written causal self-attention through
`F.scaled_dot_product_attention`. `EncoderClassifier` uses `nn.TransformerEncoder`.
Both learn a task that needs attention (copy the previous token; the class of the
first token), so healthy attention visibly sharpens.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

VOCAB, SEQ = 16, 12


def copy_data(n: int = 128, seq: int = SEQ, vocab: int = VOCAB, seed: int = 0):
    """Next-token targets that are the previous token: only attention can find them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, seq), generator=g)
    return x, torch.cat([x[:, :1], x[:, :-1]], dim=1)


def first_token_data(n: int = 128, seq: int = SEQ, vocab: int = VOCAB, seed: int = 0):
    """Padded sequences of 4..seq tokens; the label is the first token's class."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, seq), generator=g)
    lengths = torch.randint(4, seq + 1, (n,), generator=g)
    pad = torch.arange(seq)[None, :] >= lengths[:, None]
    ids = ids.masked_fill(pad, 0)
    return ids, pad, ids[:, 0] % 4


class CausalSelfAttention(nn.Module):
    """nanoGPT's attention; `temperature` and `qk_gain` plant the two attention bugs."""

    def __init__(self, d: int = 32, heads: int = 4, dropout: float = 0.1, *,
                 temperature: float = 1.0, qk_gain: float = 1.0):  # fmt: skip
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.heads, self.dropout, self.temperature = heads, dropout, temperature
        with torch.no_grad():
            self.c_attn.weight[: 2 * d] *= qk_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v,
            is_causal=True,
            dropout_p=self.dropout if self.training else 0.0,
            scale=(C // self.heads) ** -0.5 / self.temperature,
        )  # fmt: skip
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = VOCAB, seq: int = SEQ, d: int = 32, **attn):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, **attn)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(0.1)
        )
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        h = h + self.attn(self.ln1(h))
        h = h + self.mlp(self.ln2(h))
        return self.head(h)


class EncoderClassifier(nn.Module):
    """Two post-norm encoder layers (the fast-path kind) over padded token ids."""

    def __init__(self, vocab: int = VOCAB, seq: int = SEQ, d: int = 32, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.5)
        layer = nn.TransformerEncoderLayer(
            d, nhead=4, dim_feedforward=64, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.out = nn.Linear(d, 4)

    def forward(self, ids: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encoder(self.embed(ids) + self.pos[: ids.shape[1]], src_key_padding_mask=pad)
        keep = torch.ones_like(ids, dtype=h.dtype) if pad is None else (~pad).to(h.dtype)
        return self.out((h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True))


def run_loop(loop, model: nn.Module, opt, run_dir: Path | None, watch: bool):
    """`loop(lens)` under `trainlens.watch` (`lens` is None with `watch=False`): the lens or
    None. The train_* helpers here and in manual_attention_models.py share it."""
    if not watch:
        loop(None)
        return None
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        loop(lens)
    return lens


def train_gpt(model: nn.Module, run_dir: Path | None, *, steps: int = 60, watch: bool = True,
              data=None, lr: float = 3e-3):  # fmt: skip
    """Adam on the copy task; `watch=False` runs the same loop unwatched."""
    x, y = data if data is not None else copy_data()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()

    def loop(lens) -> None:
        for s in range(steps):
            i = (s * 16) % len(x)
            logits = model(x[i : i + 16])
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y[i : i + 16].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()

    return run_loop(loop, model, opt, run_dir, watch)


def train_encoder(model: nn.Module, run_dir: Path | None, *, steps: int = 60,
                  watch: bool = True, lr: float = 3e-3):  # fmt: skip
    ids, pad, y = first_token_data()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()

    def loop(lens) -> None:
        for s in range(steps):
            i = (s * 16) % len(ids)
            model.train()
            loss = loss_fn(model(ids[i : i + 16], pad[i : i + 16]), y[i : i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()

    return run_loop(loop, model, opt, run_dir, watch)
