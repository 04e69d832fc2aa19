"""The healthy twin of `tabular_val_features_not_standardised.py`: the training mean and
std standardise the validation features too."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("tabular_val_features_not_standardised.py")
    spec = importlib.util.spec_from_file_location("_tabular_val_standardised_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.SCALE_VAL = True
    program.main(run_dir)
