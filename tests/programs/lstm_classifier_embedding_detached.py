"""A pytorch/examples-style LSTM text classifier whose embedding output is `.detach()`ed
(left over from a debugging session): the embedding never gets a gradient, while the LSTM
and the head still learn, so the loss falls and no flat-loss trigger fires (issue 18 §6)."""

import torch
from torch import nn

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "no_gradient_flow", "module": "embedding"}
FROZEN = False  # True: the healthy twin, the embedding frozen on purpose and not detached


class TextClassifier(nn.Module):
    def __init__(self, vocab=50, emb=32, hidden=32, classes=3):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        if FROZEN:
            self.embedding.weight.requires_grad_(False)  # pretrained vectors, kept fixed
        self.rnn = nn.LSTM(emb, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, tokens):
        emb = self.embedding(tokens)
        if not FROZEN:
            emb = emb.detach()  # the bug
        _, (h, _) = self.rnn(emb)
        return self.fc(h[-1])


def main(run_dir):
    torch.manual_seed(0)
    tokens = torch.randint(0, 50, (384, 10))
    labels = tokens[:, -1] % 3  # the last token decides the class
    batches = [(tokens[i : i + 32], labels[i : i + 32]) for i in range(0, len(tokens), 32)]
    model = TextClassifier()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params if FROZEN else model.parameters(), lr=3e-3)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(4):
            for text, label in batches:
                optimizer.zero_grad()
                loss = criterion(model(text), label)
                loss.backward()
                optimizer.step()
