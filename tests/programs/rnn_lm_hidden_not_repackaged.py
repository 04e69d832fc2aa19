"""The pytorch/examples word_language_model loop (the `RNNModel` and `batchify` of
rnn_lm_seq_first_fed_batch_first_windows: sequence first, hand-written update, no
optimizer) with two LSTM layers, whose loop lost the `hidden = repackage_hidden(hidden)`
line: the second window's backward pass runs into the first window's graph and raises
"Trying to backward through the graph a second time"."""

from __future__ import annotations

import torch
from _sibling import sibling
from torch import nn

import trainlens

EXPECT = {"symptom": "oom", "cause": "graph_retained_across_steps"}


def _example():
    example = sibling("rnn_lm_seq_first_fed_batch_first_windows.py")
    return example


def main(run_dir) -> None:
    example = _example()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ntokens, bsz, bptt, lr = 24, 10, 20, 5.0
    train_data = example.batchify(torch.randint(0, ntokens, (6000,), generator=g), bsz)
    model = example.RNNModel(ntokens, nlayers=2)
    criterion = nn.NLLLoss()
    try:
        with trainlens.watch(model, run_dir=run_dir, quiet=True):
            model.train()
            hidden = model.init_hidden(bsz)
            for i in range(0, 25 * bptt, bptt):
                data, targets = train_data[i : i + bptt], train_data[i + 1 : i + 1 + bptt]
                model.zero_grad()
                output, hidden = model(data, hidden)  # the bug: hidden not repackaged
                loss = criterion(output, targets.reshape(-1))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
                for p in model.parameters():
                    p.data.add_(p.grad, alpha=-lr)
    except RuntimeError as err:  # what the user sees: the crash, with the drill written
        assert "second time" in str(err), err
