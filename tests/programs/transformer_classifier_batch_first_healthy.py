"""Healthy twin of transformer_classifier_batch_first_missing: the
encoder layer built with `batch_first=True`, as the rest of the code assumes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("transformer_classifier_batch_first_missing.py")
    spec = importlib.util.spec_from_file_location("_transformer_cls_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.BATCH_FIRST = True
    program.main(run_dir)
