"""Healthy twin of mlp_labels_shuffled_separately: features and labels shuffled with one
permutation, so every row keeps its label."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("mlp_labels_shuffled_separately.py")
    spec = importlib.util.spec_from_file_location("_mlp_labels_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.SAME_PERMUTATION = True
    program.main(run_dir)
