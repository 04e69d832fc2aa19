"""The healthy twin of `lenet_fc1_sized_for_32px_fed_28px_digits.py`: `fc1` is
`nn.Linear(16 * 4 * 4, 120)`, sized for what the second pool leaves of a 28x28 digit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("lenet_fc1_sized_for_32px_fed_28px_digits.py")
    spec = importlib.util.spec_from_file_location("_lenet_fc1_28px_healthy_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.FC1_FOR_28PX = True
    program.main(run_dir)
