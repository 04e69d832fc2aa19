"""The course's first loop, `nn.Linear(1, 1)` learning y = 2x, with the update written by
hand the way the chapter before optimizers does it, and the sign flipped:
`p += lr * p.grad` (a typo, or "the gradient points where the loss goes" read the wrong
way). Each step climbs the loss; a smaller learning rate only slows the climb."""

from __future__ import annotations

import torch
from torch import nn

import trainlens

EXPECT = {"symptom": "diverging", "cause": "gradient_ascent"}
SIGN = 1.0  # the healthy twin subtracts the gradient


def main(run_dir) -> None:
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 32).unsqueeze(1)
    y = 2 * x
    model = nn.Linear(1, 1)
    loss_fn = nn.MSELoss()
    lr = 0.1
    with trainlens.watch(model, run_dir=run_dir, quiet=True):
        for _epoch in range(20):
            loss = loss_fn(model(x), y)
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p += SIGN * lr * p.grad  # the bug: descent subtracts


if __name__ == "__main__":
    main("runs/course_linear_hand_written_update_sign_flipped")
