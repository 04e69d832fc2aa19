"""A classifier that runs without error and learns nothing: the loss stays flat.

The planted bug is the most common one in a first classifier: the model ends in
`nn.Softmax`, and `nn.CrossEntropyLoss` applies log-softmax again, so the loss is fed
probabilities instead of logits and its gradient is squashed. trainlens names it from the
loss's own input (rows that already sum to 1) and points at the softmax module.

    python examples/flat_loss.py
"""

from __future__ import annotations

import torch
from torch import nn

import trainlens


def main(run_dir: str | None = None) -> trainlens.Lens:
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    y = (x @ torch.randn(16, 4)).argmax(dim=1)  # 4 learnable classes
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True
    )

    model = nn.Sequential(
        nn.Linear(16, 64),
        nn.ReLU(),
        nn.Linear(64, 4),
        nn.Softmax(dim=1),  # the bug: CrossEntropyLoss wants the raw logits
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()

    with trainlens.watch(model, optimizer, run_dir=run_dir) as lens:
        for epoch in range(4):
            for xb, yb in loader:
                loss = loss_fn(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            print(f"epoch {epoch + 1}  loss {loss.item():.3f}")
    return lens


if __name__ == "__main__":
    main()
