"""Healthy twin of mlp_sigmoid_before_bce_with_logits: the model returns raw logits and
`nn.BCEWithLogitsLoss` applies the one sigmoid."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("mlp_sigmoid_before_bce_with_logits.py")
    spec = importlib.util.spec_from_file_location("_bce_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.SIGMOID_IN_MODEL = False
    program.main(run_dir)
