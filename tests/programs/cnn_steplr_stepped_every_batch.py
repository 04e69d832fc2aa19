"""pytorch/examples imagenet-style loop whose `scheduler.step()` slipped into the batch loop.

StepLR(step_size=1, gamma=0.1) is meant to divide the lr by ten once per epoch; stepped per
batch it reaches ~1e-80 within the run while the loss sits at ln C (issue 18 §7).
"""

import torch
from torch import nn
from torch.optim.lr_scheduler import StepLR

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "lr_too_low", "module": None}


class SmallCNN(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 2 * 2, classes)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


def quadrant_images(N=320):
    # a bright 4x4 patch in one quadrant of a noisy 8x8 image: the label is the quadrant
    labels = torch.randint(0, 4, (N,))
    images = 0.5 * torch.randn(N, 1, 8, 8)
    for i, q in enumerate(labels.tolist()):
        r, c = 4 * (q // 2), 4 * (q % 2)
        images[i, 0, r : r + 4, c : c + 4] += 1.0
    return images, labels


def main(run_dir):
    torch.manual_seed(0)
    images, labels = quadrant_images()
    loader = [(images[i : i + 16], labels[i : i + 16]) for i in range(0, len(images), 16)]
    model = SmallCNN()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.1)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(4):
            model.train()
            for images_b, target in loader:
                output = model(images_b)
                loss = criterion(output, target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()  # the bug: belongs after the epoch's loop
