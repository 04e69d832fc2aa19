"""Healthy twin of `tabular_regression_raw_prices.py`: the prices standardised with their
mean and std before training."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("tabular_regression_raw_prices.py")
    program.STANDARDISE = True
    program.main(run_dir)
