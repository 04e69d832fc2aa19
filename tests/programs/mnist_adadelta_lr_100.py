"""A pytorch/examples mnist-style CNN (two convs, dropout, `F.log_softmax` + `F.nll_loss`,
Adadelta with StepLR(gamma=0.7) stepped per epoch) trained at lr 100 instead of the
example's 1.0, on synthetic 16x16 digits. The first update replaces the weights, the loss
jumps to hundreds, the ReLUs die and the loss then sits at ln(10): it looks like a
network with no gradient flow."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import StepLR

import trainlens

EXPECT = {"symptom": "flat_loss", "cause": "lr_too_high"}
LR = 100.0  # the planted bug; the example's default is 1.0


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(16 * 6 * 6, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def main(run_dir):
    torch.manual_seed(0)
    digits = torch.randn(10, 1, 16, 16)
    target_all = torch.randint(0, 10, (1024,))
    data_all = digits[target_all] + 0.5 * torch.randn(1024, 1, 16, 16)
    model = Net()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=LR)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(4):
            model.train()
            for i in range(0, 1024, 64):
                data, target = data_all[i : i + 64], target_all[i : i + 64]
                optimizer.zero_grad()
                loss = F.nll_loss(model(data), target)
                loss.backward()
                optimizer.step()
            scheduler.step()
