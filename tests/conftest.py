"""Shared fixtures. Every drill.json a test writes is validated against the shipped schema."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jsonschema
import pytest
import torch

from trainlens._resources import schema_path

_VALIDATOR = jsonschema.Draft202012Validator(json.loads(schema_path().read_text()))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one worker per core already fills the machine: torch's own threads (and those of the
    # programs tests start) would only fight over the same cores
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def _validate_every_drill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run each test in its own folder, then validate every drill trainlens wrote there.

    A run directory has a run.json beside its drill; drills a test wrote by hand (to
    check what happens to broken ones) have none and are left alone.
    """
    monkeypatch.chdir(tmp_path)  # default run dirs land in tmp_path, not the checkout
    torch.manual_seed(0)
    yield
    for path in tmp_path.rglob("drill.json"):
        if (path.parent / "run.json").exists():
            _VALIDATOR.validate(json.loads(path.read_text()))


@pytest.fixture(autouse=True)
def _exact_heap_readings(monkeypatch: pytest.MonkeyPatch):
    """CPU runs read the C heap until reading it gets slow (a fragmented heap), then RSS.
    A test process's heap is fragmented by the tests before it, by an amount that depends
    on which tests ran there first: tests read the heap throughout, so what they record
    does not depend on their order or on timing (one test checks the switch itself)."""
    from trainlens._probes import _memory

    monkeypatch.setattr(_memory, "SLOW_HEAP_READ_S", math.inf)
    monkeypatch.setattr(_memory, "HEAP_READ_SHARE", math.inf)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
