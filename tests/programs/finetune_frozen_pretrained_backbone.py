"""The healthy twin of `finetune_frozen_fresh_backbone.py`: the backbone is pretrained
(trained on the task) before it is frozen, so the new head on its features trains well;
a deliberate freeze of pretrained weights is no finding."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("finetune_frozen_fresh_backbone.py")
    spec = importlib.util.spec_from_file_location("_finetune_frozen_pretrained_backbone_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.PRETRAIN_STEPS = 150
    program.main(run_dir)
