"""A small image classifier whose dataset lists its files class by class, as
`torchvision.datasets.ImageFolder` does (one folder per class, walked in sorted order),
read by a `DataLoader` built without `shuffle=True`. Every training batch holds one
class (two where the classes change), so the model chases the class of the last few
batches. Planted bug: the training loader does not shuffle (the healthy twin does)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import trainlens

EXPECT = {"symptom": "overfitting", "cause": "batches_sorted_by_class", "module": None}
SHUFFLE = False
CLASSES = ("cat", "dog", "frog", "ship")


class FolderImages(Dataset):
    """`root/<class>/<n>.png`, listed folder by folder; the pictures are made up here: a
    colour and a stripe direction per class, under noise."""

    def __init__(self, per_class: int, seed: int):
        self.samples = [(n, c) for c in range(len(CLASSES)) for n in range(per_class)]
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        _, label = self.samples[index]
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)
        image = 0.8 * torch.randn(3, 16, 16, generator=g)
        image[label % 3] += 0.5
        stripes = torch.arange(16).float().remainder(4).lt(2).float()
        image += 0.5 * (stripes[None, :, None] if label < 2 else stripes[None, None, :])
        return image, label


def main(run_dir) -> None:
    torch.manual_seed(0)
    train_set, val_set = FolderImages(per_class=128, seed=0), FolderImages(per_class=32, seed=1)
    train_loader = DataLoader(train_set, batch_size=32, shuffle=SHUFFLE)
    val_loader = DataLoader(val_set, batch_size=128)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 8 * 8, len(CLASSES)),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _ in range(4):
            model.train()
            for images, labels in train_loader:
                optimizer.zero_grad()
                loss = criterion(model(images), labels)
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                for images, labels in val_loader:
                    criterion(model(images), labels)
