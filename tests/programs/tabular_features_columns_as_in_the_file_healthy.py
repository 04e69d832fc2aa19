"""Healthy twin of tabular_features_misspelt_columns_filled_with_zeros: the feature
columns are asked for by the names the file has, so `fillna(0.0)` fills only the few
missing cells and the model learns the plans."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("tabular_features_misspelt_columns_filled_with_zeros.py")
    program.FEATURES = ["age", "income", "tenure", "visits"]
    program.main(run_dir)
