"""Healthy twin of cnn_sgd_lr_far_too_high: a sane learning rate (0.05, momentum
0.9)."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("cnn_sgd_lr_far_too_high.py")
    program.LR = 0.05
    program.main(run_dir)
