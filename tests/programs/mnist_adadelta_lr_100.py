"""The pytorch/examples mnist loop (the `Net` and the uint8 digits of
mnist_cnn_unnormalized_pixels, normalised as the example does, `F.nll_loss`, Adadelta with
StepLR(gamma=0.7) stepped per epoch) trained at lr 100 instead of the example's 1.0. The
first update replaces the weights, the loss jumps to hundreds, the ReLUs die and the loss
then sits at ln(10): it looks like a network with no gradient flow."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _sibling import sibling
from torch.optim.lr_scheduler import StepLR

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "lr_too_high"}
LR = 100.0  # the planted bug; the example's default is 1.0


def _example():
    example = sibling("mnist_cnn_unnormalized_pixels.py")
    return example


def main(run_dir) -> None:
    example = _example()
    torch.manual_seed(0)
    images, labels = example.digits()
    data_all = (images.float() / 255.0 - 0.1307) / 0.3081
    model = example.Net()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=LR)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(4):
            model.train()
            for i in range(0, len(images), 64):
                data, target = data_all[i : i + 64], labels[i : i + 64]
                optimizer.zero_grad()
                loss = F.nll_loss(model(data), target)
                loss.backward()
                optimizer.step()
            scheduler.step()
