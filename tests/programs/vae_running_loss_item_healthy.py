"""Healthy twin of vae_running_loss_keeps_graph: the running sum takes `loss.item()`, as
pytorch/examples' vae does."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("vae_running_loss_keeps_graph.py")
    program.USE_ITEM = True
    program.main(run_dir)
