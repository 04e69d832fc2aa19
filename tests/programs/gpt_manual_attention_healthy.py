"""Healthy twin: a nanoGPT-style GPT with the manual attention path, scaled by
1/sqrt(head_dim); the softmax is recognised as attention and stays clean."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("gpt_manual_attention_inverted_scale.py")
    program.SCALE = "sqrt"
    program.STEPS = 30
    program.main(run_dir)
