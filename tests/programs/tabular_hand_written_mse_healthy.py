"""Healthy twin of tabular_hand_written_mse_broadcast: the target kept as [N, 1]."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("tabular_hand_written_mse_broadcast.py")
    spec = importlib.util.spec_from_file_location("_tabular_hand_written_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.TARGET_COLUMN_2D = True
    program.main(run_dir)
