"""A nanoGPT-style `forward` that flattens the logits for `F.cross_entropy` but not the targets.

`[B*T, V]` logits against `[B, T]` targets raise inside `forward`: the drill must blame the
loss's target shape, not a layer.
"""

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "shape_mismatch", "cause": "loss_target_shape_mismatch", "module": None}


class GPT(nn.Module):
    def __init__(self, vocab=32, d=32, block_size=16):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block_size, d)
        self.mlp = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)
        )
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        logits = self.lm_head(x + self.mlp(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets)  # the bug
        return logits, loss


def main(run_dir):
    torch.manual_seed(0)
    data = torch.randint(0, 32, (2048,))
    model = GPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    try:
        with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
            for _ in range(10):
                ix = torch.randint(0, len(data) - 17, (8,))
                x = torch.stack([data[i : i + 16] for i in ix])
                y = torch.stack([data[i + 1 : i + 17] for i in ix])
                _, loss = model(x, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    except ValueError:
        pass  # the planted crash; the drill is what is judged
