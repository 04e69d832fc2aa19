"""A nanoGPT-style GPT with the manual attention path whose query and key projections
start at zero ("start each block as the identity"): q = k = 0 gives uniform rows and
exactly zero gradient to both, so attention never learns while the rest of the model does."""

from __future__ import annotations

from _sibling import sibling

EXPECT = {"symptom": "confusing_attention", "cause": "attention_uniform", "module": "blocks.0.attn"}


def main(run_dir) -> None:
    program = sibling("gpt_manual_attention_inverted_scale.py")
    program.SCALE = "sqrt"
    program.ZERO_QK = True
    program.STEPS = 60
    program.main(run_dir)
