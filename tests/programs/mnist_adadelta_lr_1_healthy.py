"""Healthy twin of mnist_adadelta_lr_100: the example's own lr of 1.0."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("mnist_adadelta_lr_100.py")
    spec = importlib.util.spec_from_file_location("_mnist_adadelta_healthy_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.LR = 1.0
    program.main(run_dir)
