"""A planted bug: `torch.log(torch.softmax(x))` instead of `F.log_softmax(x)`.

As the classifier grows confident (around step 19), a softmax probability underflows to
exactly 0 in float32 and its log is -inf; the backward pass through it gives NaN gradients, and the
next step every weight is NaN. trainlens names the module and the step where the first
non-finite value appeared.

    python examples/non_finite.py
"""

from __future__ import annotations

import torch
from torch import nn

import trainlens


class LogSoftmaxByHand(nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        # BUG: log(softmax(x)) is log(0) = -inf once a probability underflows;
        # F.log_softmax(x, dim=-1) computes the same thing stably
        return torch.log(torch.softmax(logits, dim=-1))


def main(run_dir: str | None = None) -> trainlens.Lens:
    torch.manual_seed(0)
    x = 5 * torch.randn(128, 16)  # unnormalised features: the logits grow fast
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4), LogSoftmaxByHand())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    loss_fn = nn.NLLLoss()

    with trainlens.watch(model, optimizer, run_dir=run_dir) as lens:
        for _ in range(30):
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"loss after 30 steps: {loss.item()}")
    return lens


if __name__ == "__main__":
    main()
