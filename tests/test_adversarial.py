"""Two models, two optimizers: a GAN trained the way the DCGAN tutorial trains one.

The generator's loss runs backward through the discriminator, so from either side a
backward pass arrives that belongs to the other optimizer, and the losses hold level by
design. Watched from either side a healthy GAN gets no finding; a side that never zeroes
its gradients is still caught.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import trainlens


def _mixture(n: int, g: torch.Generator) -> torch.Tensor:
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    return centers[torch.randint(0, 4, (n,), generator=g)] + 0.1 * torch.randn(n, 2, generator=g)


def train_gan(run_dir, watched: str, *, steps=200, zero_d=True, zero_g=True):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    G = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))
    D = nn.Sequential(nn.Linear(2, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    criterion = nn.BCEWithLogitsLoss()
    real_label, fake_label = torch.ones(64, 1), torch.zeros(64, 1)
    model, opt = {
        "generator": (G, opt_g),
        "discriminator": (D, opt_d),
        "both, generator's optimizer": (nn.ModuleDict({"G": G, "D": D}), opt_g),
    }[watched]
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(steps):
            real, z = _mixture(64, g), torch.randn(64, 8, generator=g)
            fake = G(z)
            if zero_d:
                opt_d.zero_grad()
            loss_d = criterion(D(real), real_label) + criterion(D(fake.detach()), fake_label)
            loss_d.backward()
            opt_d.step()
            if zero_g:
                opt_g.zero_grad()
            loss_g = criterion(D(fake), real_label)  # through D: D's .grad gets some too
            loss_g.backward()
            opt_g.step()
    return lens


@pytest.mark.parametrize("watched", ["generator", "discriminator"])
def test_a_healthy_gan_has_no_findings_from_either_side(watched, run_dir):
    lens = train_gan(run_dir, watched)
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]
    assert lens.drill["status"] == "healthy"
    others = lens.records.meta["loop_order"]["other_optimizers"]
    assert [(o["optimizer"], o["steps"], o["params_outside"], o["in_model"]) for o in others] == [
        ("Adam", 200, 4, 0)
    ]
    # what reached the watched optimizer's parameters at the start of its step's own pass
    assert (lens.records.grad_carry["carried_norm"] == 0).all()
    assert lens.records.events.query("kind == 'step_skipped'").empty


def test_a_gan_watched_as_one_module_with_one_optimizer_is_at_most_not_sure(run_dir):
    """Both halves in one `ModuleDict`, the generator's optimizer watched: the
    discriminator's parameters get gradients and sit in no watched param group, but they
    move (its own optimizer steps them). From inside one model a second optimizer over
    part of it looks like `SparseAdam` over embeddings, whose loss should fall, so a
    level loss here is an honest "not sure", never a named cause."""
    lens = train_gan(run_dir, "both, generator's optimizer")
    assert [(f.severity, f.symptom, f.likely_cause) for f in lens.findings] == [
        ("warning", "flat_loss", "unknown")
    ]
    others = lens.records.meta["loop_order"]["other_optimizers"]
    assert [(o["params_outside"], o["in_model"]) for o in others] == [(4, 4)]
    assert (lens.records.grad_carry["carried_norm"] == 0).all()


@pytest.mark.parametrize(("watched", "zero"), [("discriminator", "d"), ("generator", "g")])
def test_a_gan_side_that_never_zeroes_its_gradients_is_zero_grad_missing(watched, zero, run_dir):
    lens = train_gan(run_dir, watched, zero_d=zero != "d", zero_g=zero != "g")
    flat = [f for f in lens.findings if f.symptom == "flat_loss"]
    summaries = [f.summary() for f in lens.findings]
    assert flat and flat[0].likely_cause == "zero_grad_missing", summaries
