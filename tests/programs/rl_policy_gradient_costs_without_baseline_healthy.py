"""A policy trained with plain REINFORCE on costs (every reward negative: a step's cost,
a distance to the goal) and no baseline: `-(dist.log_prob(action) * reward).mean()`.
With negative rewards the surrogate is never above zero; as the policy grows sure of the
cheapest action the log-probability goes to 0 and the surrogate rises to 0 from below,
where it stays. That rise is the policy converging, not a divergence. Healthy: no
finding (the drill of an earlier round said `diverging` / `lr_too_high`)."""

from __future__ import annotations

import torch
from torch import nn

import trainlens

EXPECT = None


def main(run_dir) -> None:
    torch.manual_seed(0)
    costs = torch.tensor([1.0, 3.0, 5.0])  # action 0 is the cheapest
    policy = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 3))
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    with trainlens.watch(policy, optimizer, run_dir=run_dir, quiet=True):
        for _episode in range(200):
            state = torch.randn(64, 4)
            dist = torch.distributions.Categorical(logits=policy(state))
            action = dist.sample()
            reward = -costs[action]
            loss = -(dist.log_prob(action) * reward).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
