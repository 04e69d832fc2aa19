"""Healthy twin of cnn_finetune_head_replaced_after_optimizer: the head is replaced first,
then the optimizer is built, so every parameter trains."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("cnn_finetune_head_replaced_after_optimizer.py")
    program.HEAD_FIRST = True
    program.main(run_dir)
