"""The healthy twin of `finetune_frozen_fresh_backbone.py`: the backbone is pretrained
(trained on the task) before it is frozen, so the new head on its features trains well;
a deliberate freeze of pretrained weights is no finding."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("finetune_frozen_fresh_backbone.py")
    program.PRETRAIN_STEPS = 150
    program.main(run_dir)
