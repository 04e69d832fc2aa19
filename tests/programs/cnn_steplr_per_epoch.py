"""Healthy twin of cnn_steplr_stepped_every_batch: StepLR stepped once per epoch, with a
validation pass after each epoch (pytorch/examples imagenet order)."""

import torch
from _sibling import sibling
from torch import nn
from torch.optim.lr_scheduler import StepLR

import trainlens

EXPECT = None

# the model and the data are the bug program's; only the loop differs
_twin = sibling("cnn_steplr_stepped_every_batch.py")


def main(run_dir):
    torch.manual_seed(0)
    images, labels = _twin.quadrant_images()
    train = [(images[i : i + 16], labels[i : i + 16]) for i in range(0, 256, 16)]
    val_x, val_y = images[256:], labels[256:]
    model = _twin.SmallCNN()
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
