"""A pytorch/examples vae-style MLP VAE (fc1 -> fc21/fc22, reparameterize, fc3 -> fc4,
BCE + KLD summed) whose loop keeps `train_loss += loss` instead of `loss.item()`: every
step's autograd graph stays alive through the running sum (google/brax#152,
MultimediaTechLab/YOLO#83, the PyTorch FAQ's "don't accumulate history")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = {"symptom": "oom", "cause": "graph_retained_across_steps", "module": None}
USE_ITEM = False


class VAE(nn.Module):
    def __init__(self, d: int = 196, hidden: int = 128, z: int = 8):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc21 = nn.Linear(hidden, z)
        self.fc22 = nn.Linear(hidden, z)
        self.fc3 = nn.Linear(z, hidden)
        self.fc4 = nn.Linear(hidden, d)
        self.d = d

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, self.d))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar, d: int = 196):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, d), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    prototypes = (torch.rand(10, 196, generator=g) > 0.6).float()
    data = (prototypes[torch.randint(0, 10, (2048,), generator=g)] * 0.9 + 0.05).view(-1, 14, 14)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        model.train()
        train_loss = 0
        for i in range(0, len(data), 32):
            batch = data[i : i + 32]
            optimizer.zero_grad()
            recon, mu, logvar = model(batch)
            loss = loss_function(recon, batch, mu, logvar)
            loss.backward()
            train_loss += loss.item() if USE_ITEM else loss  # the bug: the graph is kept
            optimizer.step()
