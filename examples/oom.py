"""A planted bug: a layer whose output needs petabytes.

An upsampling layer with `scale_factor=65536` (where 2 was meant) asks for a 1.7 PB output
for a batch of eight 64x64 images; the allocator refuses at once with "can't allocate
memory" (on a GPU it is `torch.OutOfMemoryError`). trainlens names the module and the
memory it asked for; the example catches the error, as your script would crash on it.

    python examples/oom.py
"""

from __future__ import annotations

import torch
from torch import nn

import trainlens


def main(run_dir: str | None = None) -> trainlens.Lens:
    torch.manual_seed(0)
    images = torch.randn(8, 3, 64, 64)
    model = nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1),
        nn.Upsample(scale_factor=65536),  # BUG: meant scale_factor=2
        nn.Conv2d(3, 3, 3, padding=1),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.MSELoss()

    lens = trainlens.watch(model, optimizer, run_dir=run_dir)
    try:
        with lens:
            out = model(images)
            loss = loss_fn(out, torch.zeros_like(out))
            loss.backward()
            optimizer.step()
    except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError too
        print(f"training crashed: {str(err).splitlines()[0][:120]}")
    return lens


if __name__ == "__main__":
    main()
