"""Healthy twin of mlp_adam_finetuning_lr_from_scratch: AdamW at 1e-3."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("mlp_adam_finetuning_lr_from_scratch.py")
    spec = importlib.util.spec_from_file_location("_mlp_adam_lr_healthy_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.LR = 1e-3
    program.main(run_dir)
