"""Healthy twin of `scratch_attention_softmax_over_queries.py`: the softmax over the keys
(`dim=-1`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("scratch_attention_softmax_over_queries.py")
    spec = importlib.util.spec_from_file_location("_scratch_attention_healthy_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.SOFTMAX_DIM = -1
    program.main(run_dir)
