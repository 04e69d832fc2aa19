"""A planted bug: attention logits without the 1/sqrt(d) scaling, on large inputs.

A hand-written self-attention block calls `F.scaled_dot_product_attention` with
`scale=1.0` (as if q had been scaled already) on embeddings of scale ~5: the q·k logits
are tens of times too large and every attention row is one-hot from the first step, so
attention cannot learn. trainlens names the attention module and the saturation.

    python examples/attention.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

VOCAB = 128


class SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # BUG: scale=1.0 drops the default 1/sqrt(head_dim); the logits grow with d
        y = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = VOCAB, d: int = 64, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.attn = SelfAttention(d, heads)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = 5 * self.embed(tokens)  # large, unnormalised inputs (no LayerNorm)
        return self.head(x + self.attn(x))


def main(run_dir: str | None = None) -> trainlens.Lens:
    torch.manual_seed(0)
    tokens = torch.randint(0, VOCAB, (8, 16))
    targets = tokens.flip(1)  # predict the reversed sequence: needs attention
    model = TinyTransformer()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    with trainlens.watch(model, optimizer, run_dir=run_dir) as lens:
        for _ in range(20):
            logits = model(tokens)
            loss = loss_fn(logits.reshape(-1, VOCAB), targets.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"loss after 20 steps {loss.item():.3f}")
    return lens


if __name__ == "__main__":
    main()
