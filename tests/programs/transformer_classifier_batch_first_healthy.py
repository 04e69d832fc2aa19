"""Healthy twin of transformer_classifier_batch_first_missing: the
encoder layer built with `batch_first=True`, as the rest of the code assumes."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("transformer_classifier_batch_first_missing.py")
    program.BATCH_FIRST = True
    program.main(run_dir)
