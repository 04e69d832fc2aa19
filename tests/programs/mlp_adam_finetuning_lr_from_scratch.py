"""A classifier trained from scratch with the learning rate of a fine-tuning recipe
(AdamW at 1e-5, as BERT fine-tuning uses) for five short epochs: the updates are ~6e-5 of
the weights per step, the weights move under 1% over the run, and the loss sits at ln(4).
Above the classic two-orders-too-small threshold, so it looked like labels that carry
nothing (label_mismatch)."""

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "lr_too_low"}
LR = 1e-5  # the planted bug; the healthy twin trains at 1e-3


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(896, 20)
    y = (x @ torch.randn(20, 4)).argmax(1)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
        for _epoch in range(5):
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 32):
                idx = perm[i : i + 32]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
