"""Healthy twin of label_smoothing_kldiv_on_softmax: the generator ends in `F.log_softmax`,
as KLDivLoss expects."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("label_smoothing_kldiv_on_softmax.py")
    program.LOG_SOFTMAX = True
    program.main(run_dir)
