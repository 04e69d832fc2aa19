"""A planted bug: a small CNN whose classifier was sized for 32x32 images gets 28x28 ones.

The first forward crashes inside `classifier.1` (a Linear expecting 16*8*8 = 1024
features, receiving 16*7*7 = 784). trainlens writes a drill that names the layer, what
it expected and what it got, then lets the original error through unchanged.

    python examples/shape_mismatch.py
"""

from __future__ import annotations

import torch
from torch import nn

import trainlens


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14 -> 7
        )
        # BUG: 16 * 8 * 8 is right for 32x32 inputs; 28x28 inputs give 16 * 7 * 7 = 784
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def main(run_dir: str | None = None) -> trainlens.Lens:
    torch.manual_seed(0)
    images = torch.randn(32, 1, 28, 28)  # a batch of MNIST-sized images
    labels = torch.randint(0, 10, (32,))

    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    lens = trainlens.watch(model, optimizer, run_dir=run_dir)
    try:
        with lens:
            for _ in range(5):
                loss = loss_fn(model(images), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    except RuntimeError as err:
        # the original error reaches your code unchanged; the drill explains it
        print(f"training crashed: {err}")
        print(f"what trainlens found: {lens.findings[0].summary()}")
        print(f"first check: {lens.findings[0].first_check}")
    return lens


if __name__ == "__main__":
    main()
