"""Healthy twin of mlp_all_weights_zero_init: the layers keep PyTorch's default
(Kaiming-uniform) initialisation."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("mlp_all_weights_zero_init.py")
    program.ZERO_INIT = False
    program.main(run_dir)
