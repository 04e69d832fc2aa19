"""Healthy twin of mlp_adam_zero_grad_outside_loop: `optimizer.zero_grad()` at the top of
every step."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("mlp_adam_zero_grad_outside_loop.py")
    spec = importlib.util.spec_from_file_location("_zero_grad_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.PER_STEP = True
    program.main(run_dir)
