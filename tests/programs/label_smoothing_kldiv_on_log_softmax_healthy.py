"""Healthy twin of label_smoothing_kldiv_on_softmax: the generator ends in `F.log_softmax`,
as KLDivLoss expects."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("label_smoothing_kldiv_on_softmax.py")
    spec = importlib.util.spec_from_file_location("_label_smoothing_healthy_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.LOG_SOFTMAX = True
    program.main(run_dir)
