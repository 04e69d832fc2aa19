"""Healthy twin of rnn_lm_seq_first_fed_batch_first_windows: the word_language_model-style
sequence-first LSTM LM, hand-written update, fed its own `batchify` windows [time, batch]
with the hidden state carried over."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("rnn_lm_seq_first_fed_batch_first_windows.py")
    program.NANOGPT_WINDOWS = False
    program.main(run_dir)
