"""A nanoGPT-style GPT with the manual attention path; the logits are multiplied by
sqrt(head_dim) where they should be divided by it, so attention is one-hot from step 0."""

import math

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {
    "symptom": "confusing_attention",
    "cause": "attention_saturated",
    "module": "blocks.0.attn",
}
SCALE = "inverted"  # the planted bug; "sqrt" is the healthy twin
ZERO_QK = False  # True: gpt_manual_attention_zero_qk


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout = nn.Dropout(0.1)
        self.n_head, self.n_embd = n_head, n_embd
        mask = torch.tril(torch.ones(block_size, block_size))
        self.register_buffer("bias", mask.view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if SCALE == "inverted":
            att = (q @ k.transpose(-2, -1)) * math.sqrt(k.size(-1))
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = self.attn_dropout(att) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd))  # fmt: skip

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab=16, block_size=16, n_embd=64, n_head=2, n_layer=1):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, n_embd), nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, block_size) for _ in range(n_layer))
        self.ln_f, self.lm_head = nn.LayerNorm(n_embd), nn.Linear(n_embd, vocab)

    def forward(self, idx, targets=None):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def get_batch(data, batch_size, block_size, g):
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=g)
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
    return x, y


def main(run_dir):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 16, (3000,), generator=g)
    for i in range(2, len(data)):  # the next token follows from the one two back
        data[i] = (data[i - 2] + 1) % 16
    data[torch.rand(len(data), generator=g) < 0.1] = 0
    model = GPT()
    if ZERO_QK:
        with torch.no_grad():
            for block in model.blocks:
                n = block.attn.n_embd
                block.attn.c_attn.weight[: 2 * n].zero_()
                block.attn.c_attn.bias[: 2 * n].zero_()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True) as lens:
        for _ in range(STEPS):
            x, y = get_batch(data, 12, 16, g)
            _, loss = model(x, y)
            lens.log_loss(loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()


STEPS = 20
