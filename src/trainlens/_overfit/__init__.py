"""Overfit one batch: the first sanity check of a new model, with a diagnosis when it fails.

If a model cannot memorise 16 examples, no amount of training will fix it. This trains a
copy of the model on one batch under `trainlens.watch` (the same probes and rules), and
decides whether the batch was memorised.

One module a concern: `_setup` (what a factory returns, the batch's forms), `_train` (the
training run), `_criterion` (when a batch counts as memorised, the loss trend, accuracy),
`_verdict` (the result, and the one text the terminal and drill.md both show),
`_progress` (the live bar).
"""

from __future__ import annotations

from ._setup import Setup
from ._train import overfit_one_batch
from ._verdict import OverfitResult

__all__ = ["OverfitResult", "Setup", "overfit_one_batch"]
