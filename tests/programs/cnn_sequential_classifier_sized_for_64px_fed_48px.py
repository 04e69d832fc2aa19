"""A Kaggle-style image classifier (cats vs dogs): `self.features` an `nn.Sequential` of
conv/BatchNorm/ReLU/max-pool blocks, `self.classifier` an `nn.Sequential` of `nn.Flatten()`,
`nn.Linear`, ReLU, Dropout and the output `nn.Linear`; `nn.CrossEntropyLoss`, Adam, a loop
over mini-batches. The bug: the classifier was sized for the 64x64 images of the first
version of the notebook (`nn.Linear(32 * 16 * 16, 128)`), then the transform was changed
to resize to 48x48, which leaves 12x12 maps after the two pools: the first Linear of the
classifier, `classifier.1`, receives 32*12*12 = 4608 features and raises "mat1 and mat2
shapes cannot be multiplied (32x4608 and 8192x128)". `IMAGE_SIZE = 64` feeds what it was
sized for."""

from __future__ import annotations

import torch
from torch import nn

import trainlens

EXPECT = {"symptom": "shape_mismatch", "cause": "layer_input_mismatch", "module": "classifier.1"}
IMAGE_SIZE = 48


class CatDogCNN(nn.Module):
    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 16 * 16, 128),  # sized for 64x64 inputs
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def make_images(n: int, size: int):
    """Two classes of RGB 'photos': a bright blob left or right of centre on noise,
    normalised per channel as `transforms.Normalize(mean, std)` would."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (n,), generator=g)
    xs = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(xs, xs, indexing="ij")
    blobs = torch.stack([torch.exp(-((xx - c) ** 2 + yy**2) * 6) for c in (-0.5, 0.5)])
    images = blobs[labels].unsqueeze(1).expand(n, 3, size, size)
    images = images + 0.3 * torch.randn(n, 3, size, size, generator=g)
    mean, std = images.mean(dim=(0, 2, 3), keepdim=True), images.std(dim=(0, 2, 3), keepdim=True)
    return (images - mean) / std, labels


def main(run_dir) -> None:
    torch.manual_seed(0)
    images, labels = make_images(256, IMAGE_SIZE)
    model = CatDogCNN()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    try:
        with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
            for _epoch in range(2):
                model.train()
                perm = torch.randperm(len(images))
                for i in range(0, len(images), 32):
                    idx = perm[i : i + 32]
                    optimizer.zero_grad()
                    loss = criterion(model(images[idx]), labels[idx])
                    loss.backward()
                    optimizer.step()
    except RuntimeError:
        pass  # the planted crash; the drill is what is judged
