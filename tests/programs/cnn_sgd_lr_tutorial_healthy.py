"""Healthy twin of cnn_sgd_lr_far_too_high: a sane learning rate (0.05, momentum
0.9)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("cnn_sgd_lr_far_too_high.py")
    spec = importlib.util.spec_from_file_location("_cnn_lr_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.LR = 0.05
    program.main(run_dir)
