"""Healthy: CosineAnnealingLR to eta_min=0 over the epochs, stepped per epoch; the lr is
~0 at the very end, after the loss has fallen."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("mlp_onecycle_per_batch.py")
    program.PER_BATCH = False
    program.main(run_dir)
