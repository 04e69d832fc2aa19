"""A contextual-bandit policy trained with REINFORCE and a running-mean baseline, the way
RL tutorials write the surrogate loss: `-(log_prob(action) * (reward - baseline)).mean()`.
The surrogate is no measure of how well the policy does: it starts below zero (the
baseline starts at 0, so the first advantages are biased), swings, and settles at 0 as the
policy commits to the best arm. Healthy: no finding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import trainlens

EXPECT = None


def main(run_dir) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(10)
    arm_means = torch.linspace(-1, 1, 10)
    policy = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    context = torch.ones(64, 4)
    baseline = 0.0
    with trainlens.watch(policy, optimizer, run_dir=run_dir, quiet=True):
        for _ in range(300):
            log_probs = F.log_softmax(policy(context), dim=-1)
            actions = torch.multinomial(log_probs.exp(), 1, generator=g).squeeze(1)
            rewards = arm_means[actions] + 0.5 * torch.randn(64, generator=g)
            baseline = 0.9 * baseline + 0.1 * rewards.mean().item()
            chosen = log_probs.gather(1, actions[:, None]).squeeze(1)
            loss = -(chosen * (rewards - baseline)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
