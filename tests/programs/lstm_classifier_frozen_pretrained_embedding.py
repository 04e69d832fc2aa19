"""Healthy twin of lstm_classifier_embedding_detached: the embedding is frozen on purpose
(`requires_grad_(False)`, as with pretrained vectors) and left out of the optimizer."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("lstm_classifier_embedding_detached.py")
    program.FROZEN = True
    program.main(run_dir)
