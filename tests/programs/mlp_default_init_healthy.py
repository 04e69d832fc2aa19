"""Healthy twin of mlp_all_weights_zero_init: the layers keep PyTorch's default
(Kaiming-uniform) initialisation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("mlp_all_weights_zero_init.py")
    spec = importlib.util.spec_from_file_location("_zero_init_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.ZERO_INIT = False
    program.main(run_dir)
