"""Healthy twin of mlp_adam_finetuning_lr_from_scratch: AdamW at 1e-3."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("mlp_adam_finetuning_lr_from_scratch.py")
    program.LR = 1e-3
    program.main(run_dir)
