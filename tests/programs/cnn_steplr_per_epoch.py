"""Healthy twin of cnn_steplr_stepped_every_batch: StepLR stepped once per epoch, with a
validation pass after each epoch (pytorch/examples imagenet order)."""

import torch
from torch import nn
from torch.optim.lr_scheduler import StepLR

import trainlens

EXPECT = None


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


def main(run_dir):
    torch.manual_seed(0)
    N = 320
    # a bright 4x4 patch in one quadrant of a noisy 8x8 image: the label is the quadrant
    labels = torch.randint(0, 4, (N,))
    images = 0.5 * torch.randn(N, 1, 8, 8)
    for i, q in enumerate(labels.tolist()):
        r, c = 4 * (q // 2), 4 * (q % 2)
        images[i, 0, r : r + 4, c : c + 4] += 1.0
    train = [(images[i : i + 16], labels[i : i + 16]) for i in range(0, 256, 16)]
    val_x, val_y = images[256:], labels[256:]
    model = SmallCNN()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.5)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(5):
            model.train()
            for images_b, target in train:
                loss = criterion(model(images_b), target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                criterion(model(val_x), val_y)
            scheduler.step()
