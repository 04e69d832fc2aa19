"""The word_language_model RNN language model with its `--clip` typed as 0.00025 for 0.25
(a config value copied with one zero too many, three times over): SGD at lr 5 with
`clip_grad_norm_(model.parameters(), 0.00025)` scales every step down by the gradient's
norm over 0.00025, so the loss barely leaves ln(16). The update sizes alone say "lr too
low", and raising the lr would only hide the cut."""

from __future__ import annotations

from _sibling import sibling

EXPECT = {"symptom": "flat_loss", "cause": "gradient_clipped"}


def main(run_dir) -> None:
    program = sibling("rnn_lm_no_grad_clipping.py")
    program.CLIP = 0.00025
    program.main(run_dir)
