"""trainlens's pytest plugin (registered through the `pytest11` entry point).

    def test_model_can_memorise_a_batch(overfit_one_batch):
        overfit_one_batch(model, (x, y), nn.CrossEntropyLoss())

The fixture trains a copy of the model on the batch (see `trainlens.overfit_one_batch`)
and fails the test with the drill's summary (symptom, likely cause, first check) when
the batch is not memorised. Run directories go into the test's `tmp_path`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def overfit_one_batch(tmp_path: Path) -> Callable[..., Any]:
    """Call like `trainlens.overfit_one_batch`; fails the test when the batch is not memorised.

    Returns the `OverfitResult` of a passing run. `run_dir` defaults to
    `tmp_path/overfit-<n>`.
    """
    import trainlens  # late: collecting tests must not import torch for nothing

    count = [0]

    def check(model: Any, batch: Any, loss_fn: Any, optimizer: Any = None, **kwargs: Any):
        __tracebackhide__ = True  # the failure points at the test's call, not at trainlens
        count[0] += 1
        kwargs.setdefault("run_dir", tmp_path / f"overfit-{count[0]}")
        try:
            result = trainlens.overfit_one_batch(model, batch, loss_fn, optimizer, **kwargs)
        except trainlens.UsageError as err:
            pytest.fail(f"overfit_one_batch: {err}", pytrace=False)
        if not result.passed:
            pytest.fail(f"model cannot overfit one batch\n{result.summary()}", pytrace=False)
        return result

    return check
