"""The block exit gives back what the finished run no longer needs (issue 20): the
recording buffers are emptied at once, without waiting for a garbage collection, and
nothing keeps the run's state; the records the user reads stay."""

from __future__ import annotations

import gc
import weakref

import torch
from torch import nn

import trainlens


def test_the_recording_state_is_freed_when_the_block_ends_and_the_records_stay(run_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    loss_fn = nn.CrossEntropyLoss()
    gc.collect()
    gc.disable()  # freed by reference counting alone, not by a later collection
    try:
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
            state = weakref.ref(lens._state)
            tables = dict(lens._state.tables)
            for _ in range(20):
                loss = loss_fn(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            assert sum(len(t) for t in tables.values()) > 20
        assert lens._state is None and lens._probe_set is None
        # emptied at once: the state and its probes point at each other, and a full
        # collection in a process with torch takes about half a second
        assert all(len(t) == 0 for t in tables.values())
    finally:
        gc.enable()
    del tables
    gc.collect()
    assert state() is None  # and nothing global keeps the finished run's state alive
    assert len(lens.records.losses) == 20 and lens.drill["steps"] == 20
    assert trainlens.load_run(run_dir).records.losses["value"].tolist() == (
        lens.records.losses["value"].tolist()
    )
