"""An annotated-transformer-style classifier trained with its `LabelSmoothing` criterion
(`nn.KLDivLoss(reduction="sum")` against a smoothed target distribution), whose generator
ends in `F.softmax` where the original has `F.log_softmax`: KLDivLoss expects
log-probabilities. The loss is below zero from the start and still falls."""

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "softmax_before_loss"}
LOG_SOFTMAX = False  # the planted bug; True is the annotated transformer's own generator


class Generator(nn.Module):
    def __init__(self, d_model, vocab):
        super().__init__()
        self.proj = nn.Linear(d_model, vocab)

    def forward(self, x):
        squash = F.log_softmax if LOG_SOFTMAX else F.softmax
        return squash(self.proj(x), dim=-1)


class Classifier(nn.Module):
    def __init__(self, d_in=24, d_model=48, vocab=11):
        super().__init__()
        self.encode = nn.Sequential(nn.Linear(d_in, d_model), nn.ReLU(), nn.LayerNorm(d_model))
        self.generator = Generator(d_model, vocab)

    def forward(self, x):
        return self.generator(self.encode(x))


class LabelSmoothing(nn.Module):
    def __init__(self, size, padding_idx=0, smoothing=0.1):
        super().__init__()
        self.criterion = nn.KLDivLoss(reduction="sum")
        self.padding_idx, self.size = padding_idx, size
        self.confidence, self.smoothing = 1.0 - smoothing, smoothing

    def forward(self, x, target):
        true_dist = x.data.clone()
        true_dist.fill_(self.smoothing / (self.size - 2))
        true_dist.scatter_(1, target.data.unsqueeze(1), self.confidence)
        true_dist[:, self.padding_idx] = 0
        return self.criterion(x, true_dist.clone().detach())


def main(run_dir):
    torch.manual_seed(0)
    vocab = 11
    x = torch.randn(768, 24)
    y = (x @ torch.randn(24, vocab - 1)).argmax(1) + 1  # 0 is padding
    model = Classifier(vocab=vocab)
    criterion = LabelSmoothing(vocab)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
        for _ in range(6):
            for i in range(0, len(x), 32):
                out = model(x[i : i + 32])
                loss = criterion(out, y[i : i + 32]) / 32  # per token, as SimpleLossCompute
                loss.backward()
                opt.step()
                opt.zero_grad()
