"""A nanoGPT-style character model with a hand-written warm-up + cosine `get_lr(it)`.

`warmup_iters` was given in tokens (batch * block * iters) instead of iterations: the
warm-up never ends within the run, so the lr stays ~1e-7 and the loss sits at ln(vocab).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "lr_too_low", "module": None}

block_size, batch_size, vocab = 8, 16, 12
learning_rate, min_lr = 1e-3, 1e-4
max_iters = 60
warmup_iters = batch_size * block_size * 2000  # the bug: tokens, not iterations
lr_decay_iters = max_iters


class TinyLM(nn.Module):
    def __init__(self, n_embd=32):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd)
        )
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.size(1))
        x = self.wte(idx) + self.wpe(pos)
        x = x + self.mlp(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def get_lr(it):
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def get_batch(data):
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
    return x, y


def main(run_dir):
    torch.manual_seed(0)
    data = torch.tensor([i % vocab for i in range(4000)])
    data = (data + torch.randint(0, 2, (4000,))) % vocab

    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.1)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for it in range(max_iters):
            lr = get_lr(it)
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            X, Y = get_batch(data)
            logits, _ = model(X)
            loss = criterion(logits.view(-1, vocab), Y.view(-1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
