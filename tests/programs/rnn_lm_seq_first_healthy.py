"""Healthy twin of rnn_lm_seq_first_fed_batch_first_windows: the word_language_model-style
sequence-first LSTM LM, hand-written update, fed its own `batchify` windows [time, batch]
with the hidden state carried over."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("rnn_lm_seq_first_fed_batch_first_windows.py")
    spec = importlib.util.spec_from_file_location("_rnn_lm_seq_first_healthy_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.NANOGPT_WINDOWS = False
    program.main(run_dir)
