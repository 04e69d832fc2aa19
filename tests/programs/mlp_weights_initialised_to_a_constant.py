"""The from-scratch MLP of `mlp_all_weights_zero_init.py`, whose `init_weights` fills
every Linear's weight with 0.01 (`nn.init.constant_`, "so the outputs start small"). Not
zero, so gradients flow, but every hidden unit starts equal, computes the same thing and
gets the same gradient: the units never part, and each layer trains as one unit. The loss
settles near the class prior. Planted bug: a constant weight initialisation (its healthy
twin is `mlp_default_init_healthy.py`)."""

from __future__ import annotations

from _sibling import sibling
from torch import nn

EXPECT = {"symptom": "flat_loss", "cause": "symmetric_init", "module": "fc1"}


def init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.constant_(m.weight, 0.01)  # the bug: meant a random init
        nn.init.zeros_(m.bias)


def main(run_dir) -> None:
    program = sibling("mlp_all_weights_zero_init.py")
    program.MLP.init_weights = staticmethod(init_weights)
    program.main(run_dir)
