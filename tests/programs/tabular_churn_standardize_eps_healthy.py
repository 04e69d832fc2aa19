"""Healthy twin of `tabular_churn_standardize_no_eps.py`: the hand-written batch
standardisation divides by `x.std(0) + 1e-5`, so a batch where the rare `filed_complaint`
flag is constant zero gives 0 / 1e-5 = 0 in that column instead of NaN.

It trains well. The one remark allowed: a `shape_mismatch` warning that the layer's batch
statistics make each sample's output depend on the rest of its batch, in eval mode too (a
batch of one has no spread). True of this layer, and no error: a wrong `batch_dim_mixing`
error here was found on code written this way."""

from __future__ import annotations

from _sibling import sibling

EXPECT = {"healthy": True, "allow": ["shape_mismatch"]}


def main(run_dir) -> None:
    program = sibling("tabular_churn_standardize_no_eps.py")
    program.EPS = 1e-5
    program.main(run_dir)
