"""Healthy twin of `tabular_regression_relu_after_the_output_layer.py`: the helper leaves
the output layer a plain Linear, so the model can predict negative (standardised) prices."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("tabular_regression_relu_after_the_output_layer.py")
    program.LAST_RELU = False
    program.main(run_dir)
