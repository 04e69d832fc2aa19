"""The healthy twin of `rnn_lm_no_grad_clipping.py`: the same word_language_model
`RNN_RELU` language model, SGD at the same lr 5, with the example's
`torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)` between `backward()` and
`step()`. Its updates are as large against the weights (update/param ratio ~0.2 on the
first steps), yet the loss falls from ln(16) = 2.77 to ~0.4."""

from __future__ import annotations

from _sibling import sibling

EXPECT = None


def main(run_dir) -> None:
    program = sibling("rnn_lm_no_grad_clipping.py")
    program.CLIP = 0.25
    program.main(run_dir)
