"""Healthy twin of transformer_lm_seq_first_fed_batch_first_windows: the same LM built
with batch_first=True for its `get_batch` windows [batch, time]."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("transformer_lm_seq_first_fed_batch_first_windows.py")
    spec = importlib.util.spec_from_file_location("_transformer_lm_batch_first_healthy_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.BATCH_FIRST = True
    program.main(run_dir)
