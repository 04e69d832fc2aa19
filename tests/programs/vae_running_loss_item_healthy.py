"""Healthy twin of vae_running_loss_keeps_graph: the running sum takes `loss.item()`, as
pytorch/examples' vae does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("vae_running_loss_keeps_graph.py")
    spec = importlib.util.spec_from_file_location("_vae_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.USE_ITEM = True
    program.main(run_dir)
