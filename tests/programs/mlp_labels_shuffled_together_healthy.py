"""Healthy twin of mlp_labels_shuffled_separately: features and labels shuffled with one
permutation, so every row keeps its label."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("mlp_labels_shuffled_separately.py")
    program.SAME_PERMUTATION = True
    program.main(run_dir)
