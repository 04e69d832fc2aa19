"""Healthy: the Hugging Face no-trainer loop shape: loss / k, backward every batch, and
every k batches optimizer.step(), lr_scheduler.step() (linear warm-up then decay), zero_grad()."""

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

import trainlens

EXPECT = None


def linear_schedule_with_warmup(optimizer, warmup, total):
    def lr_lambda(step):
        if step < warmup:
            return float(step + 1) / float(max(1, warmup))
        return max(0.0, float(total - step) / float(max(1, total - warmup)))

    return LambdaLR(optimizer, lr_lambda)


def main(run_dir):
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    y = (x[:, :8].sum(1) > x[:, 8:].sum(1)).long()
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, len(x), 16)]
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 2))
    accumulation = 2
    epochs = 3
    total = epochs * len(batches) // accumulation
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    lr_scheduler = linear_schedule_with_warmup(optimizer, warmup=5, total=total)
    loss_fn = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(epochs):
            model.train()
            for step, (xb, yb) in enumerate(batches):
                loss = loss_fn(model(xb), yb) / accumulation
                loss.backward()
                if step % accumulation == 0 or step == len(batches) - 1:
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad()
