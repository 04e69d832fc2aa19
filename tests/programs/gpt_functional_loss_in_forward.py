"""A nanoGPT-style model whose `forward` returns `(logits, loss)` with `F.cross_entropy`.

Healthy: the loss computed inside `forward` must be recorded (no "no loss seen" warning)
and nothing flagged.
"""

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = None


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        return x + self.mlp(self.ln(x))


class GPT(nn.Module):
    def __init__(self, vocab=32, d=32, block_size=16, layers=2):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block_size, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1
            )
        return logits, loss


def main(run_dir):
    torch.manual_seed(0)
    # a repeating token pattern the model can learn in a few dozen steps
    text = torch.arange(4096) % 11 * 3 % 32
    model = GPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def get_batch(i, b=16, t=16):
        starts = (torch.arange(b) * 37 + i * 13) % (len(text) - t - 1)
        x = torch.stack([text[s : s + t] for s in starts])
        y = torch.stack([text[s + 1 : s + t + 1] for s in starts])
        return x, y

    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for it in range(40):
            x, y = get_batch(it)
            _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if it % 20 == 19:
                model.eval()
                with torch.no_grad():
                    model(*get_batch(it + 1000))
                model.train()
