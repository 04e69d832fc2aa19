"""The twin of `logistic_regression_hand_written_bce_minus_sign_missing.py`: the same
hand-written binary cross-entropy with its minus. Its loss starts at ln 2 and falls."""

from _sibling import sibling

EXPECT = None


def main(run_dir):
    program = sibling("logistic_regression_hand_written_bce_minus_sign_missing.py")
    program.SIGN = -1.0
    program.main(run_dir)
