"""Healthy twin of annotated_attention_no_scale: the annotated-transformer-style encoder
with its free function `attention(...)` scaled by 1/sqrt(d_k); recognised, and clean."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("annotated_attention_no_scale.py")
    program.SCALED = True
    program.STEPS = 30
    program.main(run_dir)
