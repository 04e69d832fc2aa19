"""Healthy twin of `tabular_regression_raw_prices.py`: the prices standardised with their
mean and std before training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("tabular_regression_raw_prices.py")
    spec = importlib.util.spec_from_file_location("_tabular_regression_healthy_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.STANDARDISE = True
    program.main(run_dir)
