"""Healthy twin of tabular_rows_from_a_second_source_in_other_units: the second source's
rows are converted to the first source's units before standardising."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("tabular_rows_from_a_second_source_in_other_units.py")
    program.SECOND_SOURCE_SCALE = 1.0
    program.main(run_dir)
