"""Healthy twin of mlp_adam_zero_grad_outside_loop: `optimizer.zero_grad()` at the top of
every step."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("mlp_adam_zero_grad_outside_loop.py")
    program.PER_STEP = True
    program.main(run_dir)
