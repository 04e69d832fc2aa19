"""Healthy: CosineAnnealingLR to eta_min=0 over the epochs, stepped per epoch; the lr is
~0 at the very end, after the loss has fallen."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("mlp_onecycle_per_batch.py")
    spec = importlib.util.spec_from_file_location("_mlp_cosine_annealing_per_epoch_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.PER_BATCH = False
    program.main(run_dir)
