"""A character-level GRU LM built with batch_first=True but fed the [time, batch] windows
of a `batchify`-style loader (the reverse of the nanoGPT habit): the recurrence runs
across the samples of each time step."""

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "shape_mismatch", "cause": "batch_dim_mixing", "module": "gru"}


class CharRNN(nn.Module):
    def __init__(self, vocab, hidden=48):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x):
        out, _ = self.gru(self.embed(x))
        return self.head(out)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data[: nbatch * bsz].view(bsz, -1).t().contiguous()  # [time, batch]


def main(run_dir):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    vocab, bptt = 20, 16
    data = torch.randint(0, vocab, (5000,), generator=g)
    for i in range(1, len(data)):
        data[i] = (data[i - 1] * 3 + 1) % vocab
    source = batchify(data, 16)
    model = CharRNN(vocab)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True) as lens:
        for i in range(0, 18 * bptt, bptt):
            x, y = source[i : i + bptt], source[i + 1 : i + 1 + bptt]
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
            lens.log_loss(loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
