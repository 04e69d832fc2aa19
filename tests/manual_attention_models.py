"""Attention written by hand, the way public projects write it, and softmaxes that are not
attention. Shared by tests/test_manual_attention.py and the programs in tests/programs/.

- `GPT`: nanoGPT/minGPT's manual path (`att = (q @ k.transpose(-2, -1)) * scale`,
  `masked_fill` of a causal `bias` buffer with -inf, `F.softmax(att, dim=-1)`, dropout,
  `att @ v`). `scale` plants the scaling bugs; `zero_qk` the attention that cannot learn.
- `Seq2SeqEncoder`: annotated-transformer style, a free function `attention(query, key,
  value, mask=None, dropout=None)` with `scores.masked_fill(mask == 0, -1e9)` and
  `scores.softmax(dim=-1)`, xavier-initialised projections, a padding mask.
- `SoftmaxClassifier`, `GatedExperts`, `MoERouter`, `PointerPooling`: a classifier's
  output softmax, a gating softmax, a mixture-of-experts router, an attention-pooling
  weight over a set. None of them is attention between queries and keys.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import trainlens
from attention_models import run_loop

VOCAB, BLOCK = 16, 16


def next_token_batches(n: int = 256, seq: int = BLOCK, vocab: int = VOCAB, seed: int = 0):
    """Sequences whose next token is the token two places back plus one: needs attention."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, seq + 1), generator=g)
    for t in range(2, seq + 1):
        x[:, t] = (x[:, t - 2] + 1) % vocab
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


# --- nanoGPT / minGPT --------------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block: int, scale: str = "sqrt"):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout = nn.Dropout(0.1)
        self.n_head, self.n_embd, self.scale = n_head, n_embd, scale
        self.register_buffer("bias", torch.tril(torch.ones(block, block)).view(1, 1, block, block))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.scale == "sqrt":
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        elif self.scale == "inverted":  # the bug: multiplied where it should divide
            att = (q @ k.transpose(-2, -1)) * math.sqrt(k.size(-1))
        else:  # the bug: no scaling at all
            att = q @ k.transpose(-2, -1)
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block: int, scale: str):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block, scale)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int = VOCAB, block: int = BLOCK, n_embd: int = 64,
                 n_head: int = 1, n_layer: int = 1, scale: str = "sqrt",
                 zero_qk: bool = False):  # fmt: skip
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, block, scale) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab)
        if zero_qk:  # "start every attention layer as the identity": q and k zero
            with torch.no_grad():
                for b in self.blocks:
                    b.attn.c_attn.weight[: 2 * n_embd].zero_()
                    b.attn.c_attn.bias[: 2 * n_embd].zero_()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def train_gpt(model: nn.Module, run_dir: Path | None, *, steps: int = 60, lr: float = 3e-3,
              watch: bool = True, batch: int = 16):  # fmt: skip
    x, y = next_token_batches()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    crit = nn.CrossEntropyLoss()

    def loop(lens) -> None:
        for s in range(steps):
            i = (s * batch) % len(x)
            logits, _ = model(x[i : i + batch])
            loss = crit(logits.view(-1, logits.size(-1)), y[i : i + batch].view(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run_loop(loop, model, opt, run_dir, watch)


# --- annotated-transformer ---------------------------------------------------------------
def attention(query, key, value, mask=None, dropout=None, scaled: bool = True):
    d_k = query.size(-1)
    scores = torch.matmul(query, key.transpose(-2, -1))
    if scaled:
        scores = scores / math.sqrt(d_k)
    if mask is not None:
        scores = scores.masked_fill(mask == 0, -1e9)
    p_attn = scores.softmax(dim=-1)
    if dropout is not None:
        p_attn = dropout(p_attn)
    return torch.matmul(p_attn, value), p_attn


class MultiHeadedAttention(nn.Module):
    def __init__(self, h: int, d_model: int, scaled: bool = True, dropout: float = 0.1):
        super().__init__()
        self.d_k, self.h, self.scaled = d_model // h, h, scaled
        self.linears = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(4))
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, query, key, value, mask=None):
        if mask is not None:
            mask = mask.unsqueeze(1)  # the same mask for every head
        nbatches = query.size(0)
        query, key, value = [
            lin(x).view(nbatches, -1, self.h, self.d_k).transpose(1, 2)
            for lin, x in zip(self.linears, (query, key, value), strict=False)
        ]
        x, self.attn = attention(query, key, value, mask, self.dropout, self.scaled)
        del self.attn  # keep no graph alive between steps
        x = x.transpose(1, 2).contiguous().view(nbatches, -1, self.h * self.d_k)
        return self.linears[-1](x)


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, h: int, scaled: bool):
        super().__init__()
        self.self_attn = MultiHeadedAttention(h, d_model, scaled)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.ReLU(),
                                nn.Linear(2 * d_model, d_model))  # fmt: skip

    def forward(self, x, mask):
        y = self.norm1(x)
        x = x + self.self_attn(y, y, y, mask)
        return x + self.ff(self.norm2(x))


class Seq2SeqEncoder(nn.Module):
    """An encoder over padded token ids with a per-token tagging head."""

    def __init__(self, vocab: int = VOCAB, d_model: int = 64, h: int = 1, n: int = 1,
                 scaled: bool = True):  # fmt: skip
        super().__init__()
        self.src_embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(BLOCK, d_model) * 0.1)
        self.layers = nn.ModuleList(EncoderLayer(d_model, h, scaled) for _ in range(n))
        self.norm = nn.LayerNorm(d_model)
        self.generator = nn.Linear(d_model, vocab)
        for p in self.parameters():  # as the annotated transformer initialises
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, src_mask):
        x = self.src_embed(src) * math.sqrt(self.src_embed.embedding_dim) + self.pos
        for layer in self.layers:
            x = layer(x, src_mask)
        return self.generator(self.norm(x))


def tagging_batches(n: int = 256, seq: int = BLOCK, vocab: int = VOCAB, seed: int = 0):
    """Tag every token with the first token of its sequence (needs attention); 0 pads."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(1, vocab, (n, seq), generator=g)
    lengths = torch.randint(seq // 2, seq + 1, (n,), generator=g)
    pad = torch.arange(seq)[None, :] >= lengths[:, None]
    src = src.masked_fill(pad, 0)
    tgt = src[:, :1].expand(n, seq).masked_fill(pad, -100)
    return src, tgt


def train_encoder(model: nn.Module, run_dir: Path | None, *, steps: int = 60,
                  lr: float = 3e-3, watch: bool = True):  # fmt: skip
    src, tgt = tagging_batches()
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-9)

    def loop(lens) -> None:
        for s in range(steps):
            i = (s * 16) % len(src)
            s_b, t_b = src[i : i + 16], tgt[i : i + 16]
            src_mask = (s_b != 0).unsqueeze(-2)  # [B, 1, S]
            out = model(s_b, src_mask)
            loss = F.cross_entropy(out.reshape(-1, out.size(-1)), t_b.reshape(-1))
            if lens is not None:
                lens.log_loss(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return run_loop(loop, model, opt, run_dir, watch)


# --- softmaxes that are not attention ----------------------------------------------------
class SoftmaxClassifier(nn.Module):
    """Returns probabilities (and is trained on their log, pytorch/examples style)."""

    def __init__(self, d: int = 8, classes: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x):
        return F.softmax(self.net(x), dim=-1)


class GatedExperts(nn.Module):
    """A softmax gate weighs the outputs of a few experts (mixture of experts, dense)."""

    def __init__(self, d: int = 8, experts: int = 4, classes: int = 4):
        super().__init__()
        self.gate = nn.Linear(d, experts)
        self.experts = nn.ModuleList(nn.Linear(d, classes) for _ in range(experts))

    def forward(self, x):
        w = torch.softmax(self.gate(x), dim=-1)  # [B, E]
        outs = torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, C]
        return (w.unsqueeze(-1) * outs).sum(1)


class MoERouter(nn.Module):
    """A token-level router: top-2 of the softmax over experts, per token."""

    def __init__(self, d: int = 8, experts: int = 4, classes: int = 4):
        super().__init__()
        self.w_gate = nn.Parameter(torch.randn(d, experts) * 0.1)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, d)) for _ in range(experts)
        )
        self.out = nn.Linear(d, classes)

    def forward(self, x):  # x: [B, T, d]
        probs = (x @ self.w_gate).softmax(-1)  # [B, T, E]
        top, idx = probs.topk(2, dim=-1)
        top = top / top.sum(-1, keepdim=True)
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            weight = (top * (idx == e)).sum(-1, keepdim=True)
            y = y + weight * expert(x)
        return self.out((x + y).mean(1))


class PointerPooling(nn.Module):
    """Attention pooling over a set: one learned query scores every element."""

    def __init__(self, d: int = 8, classes: int = 4):
        super().__init__()
        self.enc = nn.Linear(d, 32)
        self.query = nn.Parameter(torch.randn(1, 1, 32))
        self.out = nn.Linear(32, classes)

    def forward(self, x):  # x: [B, N, d]
        h = torch.tanh(self.enc(x))
        scores = torch.bmm(self.query.expand(len(x), 1, 32), h.transpose(1, 2))  # [B, 1, N]
        w = F.softmax(scores / math.sqrt(32), dim=-1)
        return self.out(torch.bmm(w, h).squeeze(1))


def set_data(n: int = 128, items: int = 6, d: int = 8, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, items, d, generator=g)
    return x, (x.sum(1)[:, :classes]).argmax(-1)


def train_classifier(model: nn.Module, x, y, run_dir: Path, *, steps: int = 60,
                     probabilities: bool = False):  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for s in range(steps):
            i = (s * 16) % len(x)
            out = model(x[i : i + 16])
            if probabilities:
                loss = F.nll_loss(torch.log(out + 1e-9), y[i : i + 16])
            else:
                loss = F.cross_entropy(out, y[i : i + 16])
            lens.log_loss(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return lens
