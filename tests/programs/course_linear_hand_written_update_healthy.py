"""Healthy twin of course_linear_hand_written_update_sign_flipped: the hand-written update
subtracts the gradient (`p -= lr * p.grad`), and w goes to 2."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("course_linear_hand_written_update_sign_flipped.py")
    program.SIGN = -1.0
    program.main(run_dir)
