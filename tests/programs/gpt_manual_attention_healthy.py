"""Healthy twin: a nanoGPT-style GPT with the manual attention path, scaled by
1/sqrt(head_dim); the softmax is recognised as attention and stays clean."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("gpt_manual_attention_inverted_scale.py")
    spec = importlib.util.spec_from_file_location("_gpt_manual_attention_healthy_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.SCALE = "sqrt"
    program.STEPS = 30
    program.main(run_dir)
