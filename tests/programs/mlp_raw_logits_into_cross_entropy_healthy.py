"""Healthy twin of mlp_sigmoid_before_cross_entropy: the model returns raw logits and
`nn.CrossEntropyLoss` applies the one log-softmax."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("mlp_sigmoid_before_cross_entropy.py")
    program.SIGMOID_IN_MODEL = False
    program.main(run_dir)
