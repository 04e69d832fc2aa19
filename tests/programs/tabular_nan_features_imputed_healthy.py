"""Healthy twin of `tabular_nan_features_not_imputed.py`: the missing `LotFrontage` and
`GarageYrBlt` cells are filled with the column median (`df.fillna(df.median())`) before
the features are standardised and turned into a tensor."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("tabular_nan_features_not_imputed.py")
    program.IMPUTE = True
    program.main(run_dir)
