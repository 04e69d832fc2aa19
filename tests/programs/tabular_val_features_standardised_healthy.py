"""The healthy twin of `tabular_val_features_not_standardised.py`: the training mean and
std standardise the validation features too."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("tabular_val_features_not_standardised.py")
    program.SCALE_VAL = True
    program.main(run_dir)
