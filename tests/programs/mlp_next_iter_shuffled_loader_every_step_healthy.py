"""Healthy variant of mlp_next_iter_loader_every_step: still `next(iter(train_loader))`
every step, but the loader shuffles, so each fresh iterator starts at a random batch (a
common way to sample batches with replacement): nothing to report."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("mlp_next_iter_loader_every_step.py")
    program.SHUFFLE = True
    program.main(run_dir)
