"""Healthy twin of gpt_warmup_never_ends: nanoGPT's loop shape with a warm-up that ends,
cosine decay, and gradient accumulation (loss / k, zero_grad(set_to_none=True) after the step)."""

import math

import torch
from torch import nn
from torch.nn import functional as F

import trainlens

EXPECT = None

block_size, batch_size, vocab = 8, 8, 12
learning_rate, min_lr = 3e-3, 3e-4
max_iters, warmup_iters = 40, 5
lr_decay_iters = max_iters
gradient_accumulation_steps = 4


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
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
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


def main(run_dir):
    torch.manual_seed(0)
    data = torch.tensor([(3 * i) % vocab for i in range(4000)])

    def get_batch():
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([data[i : i + block_size] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
        return x, y

    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.1)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        X, Y = get_batch()
        for it in range(max_iters):
            for param_group in optimizer.param_groups:
                param_group["lr"] = get_lr(it)
            for _micro_step in range(gradient_accumulation_steps):
                logits, _ = model(X)
                loss = criterion(logits.view(-1, vocab), Y.view(-1))
                loss = loss / gradient_accumulation_steps
                X, Y = get_batch()
                loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
