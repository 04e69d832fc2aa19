"""Healthy twin of `scratch_attention_softmax_over_queries.py`: the softmax over the keys
(`dim=-1`)."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("scratch_attention_softmax_over_queries.py")
    program.SOFTMAX_DIM = -1
    program.main(run_dir)
