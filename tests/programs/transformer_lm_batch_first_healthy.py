"""Healthy twin of transformer_lm_seq_first_fed_batch_first_windows: the same LM built
with batch_first=True for its `get_batch` windows [batch, time]."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("transformer_lm_seq_first_fed_batch_first_windows.py")
    program.BATCH_FIRST = True
    program.main(run_dir)
