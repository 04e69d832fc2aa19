"""Healthy twin of lstm_classifier_embedding_detached: the embedding is frozen on purpose
(`requires_grad_(False)`, as with pretrained vectors) and left out of the optimizer."""

import torch
from torch import nn

import trainlens

EXPECT = None


class TextClassifier(nn.Module):
    def __init__(self, vocab=50, emb=32, hidden=32, classes=3):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.embedding.weight.requires_grad_(False)  # pretrained vectors, kept fixed
        self.rnn = nn.LSTM(emb, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, tokens):
        _, (h, _) = self.rnn(self.embedding(tokens))
        return self.fc(h[-1])


def main(run_dir):
    torch.manual_seed(0)
    tokens = torch.randint(0, 50, (384, 10))
    labels = tokens[:, -1] % 3  # the last token decides the class
    batches = [(tokens[i : i + 32], labels[i : i + 32]) for i in range(0, len(tokens), 32)]
    model = TextClassifier()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(4):
            for text, label in batches:
                optimizer.zero_grad()
                loss = criterion(model(text), label)
                loss.backward()
                optimizer.step()
