"""Healthy twin of mnist_cnn_unnormalized_pixels: the same pytorch/examples mnist-style
`Net` and loop, the pixels scaled to [0, 1] and normalised with MNIST's mean and std as
`transforms.Normalize((0.1307,), (0.3081,))` does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("mnist_cnn_unnormalized_pixels.py")
    spec = importlib.util.spec_from_file_location("_mnist_cnn_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.NORMALIZE = True
    program.main(run_dir)
