"""Healthy twin of annotated_attention_no_scale: the annotated-transformer-style encoder
with its free function `attention(...)` scaled by 1/sqrt(d_k); recognised, and clean."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("annotated_attention_no_scale.py")
    spec = importlib.util.spec_from_file_location("_annotated_attention_healthy_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.SCALED = True
    program.STEPS = 30
    program.main(run_dir)
