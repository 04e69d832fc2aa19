"""A pytorch/examples word_language_model-style LSTM LM (sequence first, `batchify`
windows [time, batch], hand-written update, no optimizer) whose loop lost the
`hidden = repackage_hidden(hidden)` line: the second window's backward pass runs into the
first window's graph and raises "Trying to backward through the graph a second time"."""

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "oom", "cause": "graph_retained_across_steps"}


class RNNModel(nn.Module):
    def __init__(self, ntoken, ninp=32, nhid=32, nlayers=2, dropout=0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.ntoken, self.nlayers, self.nhid = ntoken, nlayers, nhid

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid),
                weight.new_zeros(self.nlayers, bsz, self.nhid))  # fmt: skip


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data[: nbatch * bsz].view(bsz, -1).t().contiguous()


def main(run_dir):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ntokens, bsz, bptt, lr = 24, 10, 20, 5.0
    data = torch.randint(0, ntokens, (6000,), generator=g)
    train_data = batchify(data, bsz)
    model = RNNModel(ntokens)
    criterion = nn.NLLLoss()
    try:
        with trainlens.watch(model, run_dir=run_dir, quiet=True):
            model.train()
            hidden = model.init_hidden(bsz)
            for i in range(0, 25 * bptt, bptt):
                data_, targets = train_data[i : i + bptt], train_data[i + 1 : i + 1 + bptt]
                model.zero_grad()
                output, hidden = model(data_, hidden)  # the bug: hidden not repackaged
                loss = criterion(output, targets.reshape(-1))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
                for p in model.parameters():
                    p.data.add_(p.grad, alpha=-lr)
    except RuntimeError as err:  # what the user sees: the crash, with the drill written
        assert "second time" in str(err), err
