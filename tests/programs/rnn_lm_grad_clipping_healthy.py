"""The healthy twin of `rnn_lm_no_grad_clipping.py`: the same word_language_model
`RNN_RELU` language model, SGD at the same lr 5, with the example's
`torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)` between `backward()` and
`step()`. Its updates are as large against the weights (update/param ratio ~0.2 on the
first steps), yet the loss falls from ln(16) = 2.77 to ~0.4."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXPECT = None


def main(run_dir) -> None:
    path = Path(__file__).with_name("rnn_lm_no_grad_clipping.py")
    spec = importlib.util.spec_from_file_location("_rnn_lm_grad_clipping_healthy_twin", path)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    program.CLIP = 0.25
    program.main(run_dir)
