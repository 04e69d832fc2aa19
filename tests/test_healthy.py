"""Trust silence: healthy training of many kinds gives a healthy drill with no findings."""

from __future__ import annotations

import pytest

from healthy_programs import PROGRAMS


@pytest.mark.parametrize("program", PROGRAMS.values(), ids=PROGRAMS.keys())
def test_healthy_program_has_no_findings(program, run_dir):
    lens = program(run_dir)
    assert lens.drill["status"] == "healthy"
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]
    losses = lens.records.train_loss()
    assert len(losses) >= 10
    # it really trained: the last steps are clearly below the first ones
    assert losses.iloc[-3:].mean() < 0.7 * losses.iloc[:3].mean(), losses.tolist()
