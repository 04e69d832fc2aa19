"""The healthy twin of `mha_classifier_zero_qk_init.py`: PyTorch's default (xavier)
initialisation of the attention projections."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = None
ZERO_QK = False


class AttentionClassifier(nn.Module):
    def __init__(self, vocab: int = 16, d_model: int = 32, heads: int = 4, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes)
        self._init_weights()

    def _init_weights(self) -> None:
        if ZERO_QK:
            d = self.attn.embed_dim
            with torch.no_grad():
                self.attn.in_proj_weight[: 2 * d].zero_()  # query and key rows

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        h, _ = self.attn(x, x, x, need_weights=False)
        return self.head(self.norm(x + h)[:, 0])  # classify from the first position


def dataset(n: int = 512, seq: int = 8, vocab: int = 16, classes: int = 4) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n, seq), generator=g)
    # the label is the token at a position the first token points to: needs attention
    pos = ids[:, 0] % seq
    return TensorDataset(ids, ids[torch.arange(n), pos] % classes)


def main(run_dir) -> None:
    torch.manual_seed(0)
    model = AttentionClassifier()
    loader = DataLoader(dataset(), batch_size=32, shuffle=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(4):
            for ids, labels in loader:
                optimizer.zero_grad()
                loss = criterion(model(ids), labels)
                loss.backward()
                optimizer.step()
