"""Healthy twin of segmentation_masks_read_as_0_255: the masks are divided by 255 before
the loss, so each pixel's target is 0 or 1."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("segmentation_masks_read_as_0_255.py")
    program.MASK_SCALE = 255.0
    program.main(run_dir)
