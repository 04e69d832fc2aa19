"""The healthy twin of `tabular_val_labels_misaligned_join.py`: the validation labels are
looked up by id, like the training ones."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("tabular_val_labels_misaligned_join.py")
    spec = importlib.util.spec_from_file_location("_tabular_val_labels_joined_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.ALIGN_VAL_LABELS = True
    program.main(run_dir)
