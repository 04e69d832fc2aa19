"""The healthy twin of `mlp_zero_grad_missing_relus_die.py`: zero_grad() in the loop."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("mlp_zero_grad_missing_relus_die.py")
    program.ZERO_GRAD = True
    program.main(run_dir)
