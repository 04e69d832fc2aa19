"""Healthy twin of lstm_classifier_embedding_detached: the embedding is frozen on purpose
(`requires_grad_(False)`, as with pretrained vectors) and left out of the optimizer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("lstm_classifier_embedding_detached.py")
    spec = importlib.util.spec_from_file_location("_lstm_frozen_embedding_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.FROZEN = True
    program.main(run_dir)
