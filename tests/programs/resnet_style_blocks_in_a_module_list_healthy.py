"""Healthy twin of resnet_style_blocks_in_a_plain_list: the blocks are held in
`nn.ModuleList`, so their weights are the model's and the optimizer trains them."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("resnet_style_blocks_in_a_plain_list.py")
    program.MODULE_LIST = True
    program.main(run_dir)
