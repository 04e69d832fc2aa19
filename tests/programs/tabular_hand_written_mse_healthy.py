"""Healthy twin of tabular_hand_written_mse_broadcast: the target kept as [N, 1]."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("tabular_hand_written_mse_broadcast.py")
    program.TARGET_COLUMN_2D = True
    program.main(run_dir)
