"""Language models whose layout meets data of the other layout, as real code does.

- `RNNModel`: pytorch/examples word_language_model style (sequence first: `nn.LSTM`/`GRU`
  with batch_first=False, `F.log_softmax` over `[T*B, V]`, `NLLLoss`), trained with the
  example's hand-written update `p.data.add_(p.grad, alpha=-lr)` and no optimizer;
  `batchify`/`get_seq_batch` give `[T, B]` windows, nanoGPT's `get_batch` `[B, T]` ones.
- `TransformerLM`: the same example's sequence-first `nn.TransformerEncoder` LM, with the
  causal mask built from `len(src)`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

VOCAB = 24


def corpus(n: int = 4000, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    """A token stream with structure (each token follows from the previous two)."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab, (n,), generator=g)
    noise = torch.rand(n, generator=g) < 0.2
    for i in range(2, n):
        if not noise[i]:
            data[i] = (data[i - 1] + data[i - 2]) % vocab
    return data


def batchify(data: torch.Tensor, bsz: int) -> torch.Tensor:
    nbatch = data.size(0) // bsz
    return data[: nbatch * bsz].view(bsz, -1).t().contiguous()  # [T_total, B]


def get_seq_batch(source: torch.Tensor, i: int, bptt: int):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)


def get_batch(data: torch.Tensor, batch_size: int, block_size: int, g: torch.Generator):
    """nanoGPT: random windows, stacked along a leading batch axis: [B, T]."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=g)
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
    return x, y


class RNNModel(nn.Module):
    def __init__(self, rnn_type: str = "LSTM", ntoken: int = VOCAB, ninp: int = 32,
                 nhid: int = 32, nlayers: int = 1, batch_first: bool = False):  # fmt: skip
        super().__init__()
        self.drop = nn.Dropout(0.1)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, batch_first=batch_first)
        self.decoder = nn.Linear(nhid, ntoken)
        self.ntoken, self.nlayers, self.nhid, self.rnn_type = ntoken, nlayers, nhid, rnn_type

    def forward(self, input: torch.Tensor, hidden=None):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz: int):
        w = next(self.parameters())
        h = w.new_zeros(self.nlayers, bsz, self.nhid)
        return (h, w.new_zeros(self.nlayers, bsz, self.nhid)) if self.rnn_type == "LSTM" else h


def repackage_hidden(h):
    return h.detach() if isinstance(h, torch.Tensor) else tuple(repackage_hidden(v) for v in h)


def train_rnn_by_hand(model: RNNModel, run_dir: Path | None, *, windows: str = "seq",
                      steps: int = 20, lr: float = 2.0, bsz: int = 8,
                      bptt: int = 12, watch: bool = True, carry_hidden: bool = True):  # fmt: skip
    """The example's loop: NLLLoss, clip_grad_norm_, `p.data.add_`, no optimizer.

    windows="seq": batchify + get_batch of the example ([T, B], hidden carried over);
    windows="nanogpt": random [B, T] windows from a nanoGPT-style get_batch.
    `carry_hidden=False` starts every window from a zero state (hidden=None).
    """
    data, crit, g = corpus(), nn.NLLLoss(), torch.Generator().manual_seed(1)
    source = batchify(data, bsz)

    def loop() -> None:
        hidden = model.init_hidden(bsz)
        for step in range(steps):
            model.train()
            if windows == "seq":
                i = (step * bptt) % (len(source) - bptt - 1)
                x, y = get_seq_batch(source, i, bptt)
                hidden = repackage_hidden(hidden) if carry_hidden else None
                model.zero_grad()
                out, hidden = model(x, hidden)
            else:
                x, y = get_batch(data, bsz, bptt, g)
                y = y.reshape(-1)
                model.zero_grad()
                out, _ = model(x)
            loss = crit(out, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)

    if not watch:
        loop()
        return None
    with trainlens.watch(model, run_dir=run_dir, quiet=True) as lens:
        loop()
    return lens


class TransformerLM(nn.Module):
    """Sequence first, as nn.TransformerEncoder defaults to; causal over len(src)."""

    def __init__(self, ntoken: int = VOCAB, d: int = 32, nhead: int = 2, batch_first=False):
        super().__init__()
        self.batch_first = batch_first
        self.encoder = nn.Embedding(ntoken, d)
        layer = nn.TransformerEncoderLayer(d, nhead, 64, dropout=0.1, batch_first=batch_first)
        self.transformer_encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.decoder = nn.Linear(d, ntoken)
        self.d = d

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        n = src.size(1) if self.batch_first else len(src)
        mask = nn.Transformer.generate_square_subsequent_mask(n)
        h = self.encoder(src) * math.sqrt(self.d)
        return self.decoder(self.transformer_encoder(h, mask, is_causal=True))


def train_lm(model: nn.Module, run_dir: Path, *, windows: str = "nanogpt", steps: int = 5,
             bsz: int = 8, block: int = 12):  # fmt: skip
    """Adam and F.cross_entropy outside the model, on [B, T] or [T, B] windows."""
    data, g = corpus(), torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(steps):
            x, y = get_batch(data, bsz, block, g)
            if windows == "seq":
                x, y = x.t().contiguous(), y.t().contiguous()
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return lens
