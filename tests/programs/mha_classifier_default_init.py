"""The healthy twin of `mha_classifier_zero_qk_init.py`: PyTorch's default (xavier)
initialisation of the attention projections."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("mha_classifier_zero_qk_init.py")
    program.ZERO_QK = False
    program.main(run_dir)
