"""Healthy twin of mlp_next_iter_loader_every_step: the loop makes one iterator and
calls `next()` on it each step, starting a new pass when it runs out."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("mlp_next_iter_loader_every_step.py")
    program.KEEP_ITERATOR = True
    program.main(run_dir)
