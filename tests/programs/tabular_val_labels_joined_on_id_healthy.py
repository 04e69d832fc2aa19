"""The healthy twin of `tabular_val_labels_misaligned_join.py`: the validation labels are
looked up by id, like the training ones."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("tabular_val_labels_misaligned_join.py")
    program.ALIGN_VAL_LABELS = True
    program.main(run_dir)
