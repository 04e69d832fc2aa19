"""Healthy twin of cnn_finetune_head_replaced_after_optimizer: the head is replaced first,
then the optimizer is built, so every parameter trains."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("cnn_finetune_head_replaced_after_optimizer.py")
    spec = importlib.util.spec_from_file_location("_head_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.HEAD_FIRST = True
    program.main(run_dir)
