"""Healthy twin of mnist_cnn_unnormalized_pixels: the same pytorch/examples mnist-style
`Net` and loop, the pixels scaled to [0, 1] and normalised with MNIST's mean and std as
`transforms.Normalize((0.1307,), (0.3081,))` does."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("mnist_cnn_unnormalized_pixels.py")
    program.NORMALIZE = True
    program.main(run_dir)
