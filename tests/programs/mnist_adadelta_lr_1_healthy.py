"""Healthy twin of mnist_adadelta_lr_100: the example's own lr of 1.0."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("mnist_adadelta_lr_100.py")
    program.LR = 1.0
    program.main(run_dir)
