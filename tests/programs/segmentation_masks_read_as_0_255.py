"""A small segmentation net (conv encoder-decoder, one logit per pixel) trained with
`nn.BCEWithLogitsLoss` on masks loaded from PNG files the way many tutorials load them:
`torch.from_numpy(np.array(Image.open(path))).float()`, which keeps the mask's 0/255
pixel values. BCE takes a probability in [0, 1] per pixel and torch accepts 255 without
a word: the first loss is ~9 with logits near zero (about -0.2), and the model is pulled
towards a probability that cannot be."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "bad_initial_loss"}
MASK_SCALE = 1.0  # the healthy twin divides by 255


class TinySegNet(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 1, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def _images(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright blobs on a dark background; the mask marks the blob, stored as a 0/255 PNG."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    centres = torch.rand(n, 2, generator=g) * 10 + 3
    radius = torch.rand(n, 1, 1, generator=g) * 3 + 2
    inside = (yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2
    mask_png = (inside < radius**2).to(torch.uint8) * 255  # what the PNG file holds
    image = mask_png.float() / 255 * 0.6 + 0.2 * torch.rand(n, 16, 16, generator=g)
    return image[:, None], mask_png[:, None]


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images, mask_png = _images(256, g)
    masks = mask_png.float() / MASK_SCALE  # the bug: 0/255 kept
    loader = DataLoader(TensorDataset(images, masks), batch_size=16, shuffle=True, generator=g)
    model = TinySegNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.BCEWithLogitsLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(3):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
