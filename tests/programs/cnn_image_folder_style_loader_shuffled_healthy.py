"""Healthy twin of `cnn_image_folder_style_loader_without_shuffle.py`: the training
loader shuffles (`shuffle=True`), so each batch mixes the classes."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("cnn_image_folder_style_loader_without_shuffle.py")
    program.SHUFFLE = True
    program.main(run_dir)
