"""A nanoGPT-style GPT with the manual attention path whose query and key projections
start at zero ("start each block as the identity"): q = k = 0 gives uniform rows and
exactly zero gradient to both, so attention never learns while the rest of the model does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = {"symptom": "confusing_attention", "cause": "attention_uniform", "module": "blocks.0.attn"}


def main(run_dir) -> None:
    path = Path(__file__).with_name("gpt_manual_attention_inverted_scale.py")
    spec = importlib.util.spec_from_file_location("_gpt_manual_attention_zero_qk_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.SCALE = "sqrt"
    program.ZERO_QK = True
    program.STEPS = 60
    program.main(run_dir)
