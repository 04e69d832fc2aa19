"""The healthy twin of `mha_classifier_zero_qk_init.py`: PyTorch's default (xavier)
initialisation of the attention projections."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("mha_classifier_zero_qk_init.py")
    spec = importlib.util.spec_from_file_location("_mha_classifier_default_init_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.ZERO_QK = False
    program.main(run_dir)
