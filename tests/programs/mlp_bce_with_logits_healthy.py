"""Healthy twin of mlp_sigmoid_before_bce_with_logits: the model returns raw logits and
`nn.BCEWithLogitsLoss` applies the one sigmoid."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("mlp_sigmoid_before_bce_with_logits.py")
    program.SIGMOID_IN_MODEL = False
    program.main(run_dir)
