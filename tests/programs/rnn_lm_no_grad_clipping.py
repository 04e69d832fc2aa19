"""The pytorch/examples word_language_model recipe run with `--model RNN_RELU` (an Elman
RNN with ReLU units, the example's `RNNModel` with uniform(-0.1, 0.1) encoder/decoder
init, `batchify` columns, `repackage_hidden`, BPTT window 70, `log_softmax` + NLLLoss)
trained by `torch.optim.SGD` at the lr that works with the example's `--clip 0.25`. The
bug, from "loss becomes nan after a few batches" threads on vanilla/ReLU RNNs: the
`torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)` line between `backward()`
and `step()` was dropped ("the LSTM never needed it"). Through 70 ReLU recurrences one
step's gradient norm jumps from ~0.3 to ~1e7, the update that follows throws the
recurrent weights far past a spectral radius of 1, and the loss is NaN a step later."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "non_finite", "cause": "exploding_gradient", "module": "rnn"}
CLIP = None  # the bug: no gradient clipping; the healthy twin sets the example's 0.25
LR = 5.0


class RNNModel(nn.Module):
    """Encoder, a recurrent module, decoder (word_language_model's `RNNModel`)."""

    def __init__(self, rnn_type, ntoken, ninp=32, nhid=64, nlayers=1, dropout=0.2):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type in ("LSTM", "GRU"):
            self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=0.0)
        else:
            nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
            self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=nonlinearity)
        self.decoder = nn.Linear(nhid, ntoken)
        self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers
        self.init_weights()

    def init_weights(self):
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (weight.new_zeros(self.nlayers, bsz, self.nhid),
                    weight.new_zeros(self.nlayers, bsz, self.nhid))  # fmt: skip
        return weight.new_zeros(self.nlayers, bsz, self.nhid)


def repackage_hidden(h):
    """Wraps hidden states in new Tensors, to detach them from their history."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data[: nbatch * bsz].view(bsz, -1).t().contiguous()


def get_batch(source, i, bptt):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)


def corpus(ntokens=16, n=24000):
    """A token stream with structure to learn: each token is the sum of the two before it
    (mod the vocabulary), with one token in ten replaced by token 1."""
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, ntokens, (n,), generator=g)
    for i in range(2, n):
        data[i] = (data[i - 1] + data[i - 2]) % ntokens
    data[torch.rand(n, generator=g) < 0.1] = 1
    return data


def main(run_dir) -> None:
    torch.manual_seed(0)
    ntokens, bsz, bptt, epochs = 16, 16, 70, 6
    train_data = batchify(corpus(ntokens), bsz)
    model = RNNModel("RNN_RELU", ntokens)
    criterion = nn.NLLLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(epochs):
            model.train()
            hidden = model.init_hidden(bsz)
            for i in range(0, train_data.size(0) - 1, bptt):
                data, targets = get_batch(train_data, i, bptt)
                hidden = repackage_hidden(hidden)
                optimizer.zero_grad()
                output, hidden = model(data, hidden)
                loss = criterion(output, targets)
                loss.backward()
                if CLIP is not None:  # the example: clip_grad_norm_ helps prevent the
                    # exploding gradient problem in RNNs / LSTMs
                    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
                optimizer.step()
