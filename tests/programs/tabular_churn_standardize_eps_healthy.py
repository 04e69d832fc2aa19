"""Healthy twin of `tabular_churn_standardize_no_eps.py`: the hand-written batch
standardisation divides by `x.std(0) + 1e-5`, so a batch where the rare `filed_complaint`
flag is constant zero gives 0 / 1e-5 = 0 in that column instead of NaN.

It trains well. The one remark allowed: a `shape_mismatch` warning that the layer's batch
statistics make each sample's output depend on the rest of its batch, in eval mode too (a
batch of one has no spread). True of this layer, and no error: a wrong `batch_dim_mixing`
error here was found on code written this way."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = {"healthy": True, "allow": ["shape_mismatch"]}


def main(run_dir) -> None:
    path = Path(__file__).with_name("tabular_churn_standardize_no_eps.py")
    spec = importlib.util.spec_from_file_location("_tabular_churn_standardize_healthy_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.EPS = 1e-5
    program.main(run_dir)
