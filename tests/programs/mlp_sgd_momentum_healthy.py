"""The healthy twin of `mlp_zero_grad_missing_relus_die.py`: zero_grad() in the loop."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("mlp_zero_grad_missing_relus_die.py")
    spec = importlib.util.spec_from_file_location("_mlp_sgd_momentum_healthy_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.ZERO_GRAD = True
    program.main(run_dir)
