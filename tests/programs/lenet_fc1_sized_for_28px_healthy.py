"""The healthy twin of `lenet_fc1_sized_for_32px_fed_28px_digits.py`: `fc1` is
`nn.Linear(16 * 4 * 4, 120)`, sized for what the second pool leaves of a 28x28 digit."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("lenet_fc1_sized_for_32px_fed_28px_digits.py")
    program.FC1_FOR_28PX = True
    program.main(run_dir)
