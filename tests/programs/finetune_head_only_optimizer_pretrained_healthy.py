"""Fine-tuning by handing the optimizer only the new head (`AdamW(model.classifier
.parameters())`, the Hugging Face / torchvision "train only the classifier" shortcut)
without setting `requires_grad=False` on the pretrained backbone: it gets gradients and
never moves, on purpose. Healthy: a pretrained part left out of the optimizer is a
freeze, not the head-swapped-after-the-optimizer bug (its weights are no fresh init)."""

from __future__ import annotations

import torch
from _sibling import sibling
from torch import nn
from torch.utils.data import DataLoader

import trainlens

EXPECT = None


def main(run_dir) -> None:
    base = sibling("finetune_frozen_fresh_backbone.py")
    torch.manual_seed(0)
    loader = DataLoader(base.dataset(), batch_size=32, shuffle=False)
    model = base.FineTuneModel()
    base.pretrain(model, loader, 150)  # as finetune_frozen_pretrained_backbone does
    model.classifier = nn.Linear(128, 4)  # a new head for the downstream task
    optimizer = torch.optim.AdamW(model.classifier.parameters(), lr=3e-3, weight_decay=0.01)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(3):
            for x, y in loader:
                optimizer.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
