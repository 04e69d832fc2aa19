"""A GAN trained the way the PyTorch DCGAN tutorial trains one, on a 2-D point mixture.

`netD.zero_grad()`, the discriminator's real and fake passes accumulated into one
`optimizerD.step()`, then `netG.zero_grad()` and the generator's loss backward through
the discriminator. Sigmoid output with `BCELoss`, Adam(0.5, 0.999). The discriminator is
watched: the generator's pass reaches its parameters and belongs to the other optimizer,
and both losses hold level by design. Healthy.
"""

from __future__ import annotations

import torch
from torch import nn

import trainlens

EXPECT = None

NZ = 8


def sample_real(n: int, g: torch.Generator) -> torch.Tensor:
    angles = torch.randint(0, 8, (n,), generator=g).float() * (torch.pi / 4)
    centers = torch.stack([angles.cos(), angles.sin()], dim=1) * 2
    return centers + 0.05 * torch.randn(n, 2, generator=g)


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    netG = nn.Sequential(
        nn.Linear(NZ, 64), nn.BatchNorm1d(64), nn.ReLU(True), nn.Linear(64, 2)
    )  # fmt: skip
    netD = nn.Sequential(
        nn.Linear(2, 64), nn.LeakyReLU(0.2, inplace=True), nn.Linear(64, 1), nn.Sigmoid()
    )  # fmt: skip
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real_label, fake_label = 1.0, 0.0
    batch = 64
    with trainlens.watch(netD, optimizerD, run_dir=run_dir, quiet=True):
        for _ in range(300):
            # (1) update D: maximize log(D(x)) + log(1 - D(G(z)))
            netD.zero_grad()
            real = sample_real(batch, g)
            label = torch.full((batch,), real_label)
            errD_real = criterion(netD(real).view(-1), label)
            errD_real.backward()
            fake = netG(torch.randn(batch, NZ, generator=g))
            label.fill_(fake_label)
            errD_fake = criterion(netD(fake.detach()).view(-1), label)
            errD_fake.backward()
            optimizerD.step()
            # (2) update G: maximize log(D(G(z)))
            netG.zero_grad()
            label.fill_(real_label)
            errG = criterion(netD(fake).view(-1), label)
            errG.backward()
            optimizerG.step()
