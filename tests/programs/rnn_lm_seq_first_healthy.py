"""Healthy twin of rnn_lm_seq_first_fed_batch_first_windows: the word_language_model-style
sequence-first LSTM LM, hand-written update, fed its own `batchify` windows [time, batch]
with the hidden state carried over."""

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = None
NANOGPT_WINDOWS = False


class RNNModel(nn.Module):
    def __init__(self, ntoken, ninp=32, nhid=32, nlayers=1, dropout=0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout if nlayers > 1 else 0.0)
        self.decoder = nn.Linear(nhid, ntoken)
        self.ntoken, self.nlayers, self.nhid = ntoken, nlayers, nhid

    def forward(self, input, hidden=None):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid),
                weight.new_zeros(self.nlayers, bsz, self.nhid))  # fmt: skip


def repackage_hidden(h):
    return h.detach() if isinstance(h, torch.Tensor) else tuple(repackage_hidden(v) for v in h)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data[: nbatch * bsz].view(bsz, -1).t().contiguous()


def get_batch(data, batch_size, block_size, g):
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=g)
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
    return x, y


def main(run_dir):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ntokens, bsz, bptt, lr = 24, 10, 20, 5.0
    data = torch.randint(0, ntokens, (6000,), generator=g)
    for i in range(2, len(data)):
        data[i] = (data[i - 1] + data[i - 2]) % ntokens
    data[torch.rand(len(data), generator=g) < 0.2] = 1
    train_data = batchify(data, bsz)
    model = RNNModel(ntokens)
    criterion = nn.NLLLoss()
    with trainlens.watch(model, run_dir=run_dir, quiet=True):
        model.train()
        hidden = model.init_hidden(bsz)
        for i in range(0, 25 * bptt, bptt):
            model.zero_grad()
            if NANOGPT_WINDOWS:
                x, y = get_batch(data, bsz, bptt, g)
                output, _ = model(x)
            else:
                x, y = train_data[i : i + bptt], train_data[i + 1 : i + 1 + bptt]
                hidden = repackage_hidden(hidden)
                output, hidden = model(x, hidden)
            loss = criterion(output, y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
