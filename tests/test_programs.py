"""The program collection (tests/programs/): each program's drill must say what it planted.

One file per program (issue 18 "Show it"); `EXPECT` is the contract: a planted bug's
symptom, first cause and module, or None for a healthy program (no error finding, and no
finding beyond the symptoms it allows). `benchmarks/diagnosis.py` runs the same programs
and prints the totals.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from diagnosis import judge, load_program, program_files  # noqa: E402

PROGRAMS = program_files()


def test_the_collection_is_not_empty_and_every_program_says_what_it_expects():
    assert len(PROGRAMS) >= 8
    for path in PROGRAMS:
        module = load_program(path)
        assert callable(getattr(module, "main", None)), f"{path.name} has no main(run_dir)"
        assert hasattr(module, "EXPECT"), f"{path.name} has no EXPECT"
        assert module.__doc__, f"{path.name} says nowhere what it is"


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_program_drill(path: Path, run_dir: Path):
    module = load_program(path)
    module.main(run_dir)
    drill = json.loads((run_dir / "drill.json").read_text())
    verdict = judge(path.stem, module.EXPECT, drill)
    summary = [
        (f["severity"], f["symptom"], f["module"], [c["id"] for c in f["likely_causes"]])
        for f in drill["findings"]
    ]
    if verdict.healthy:
        assert verdict.clean, f"healthy program flagged: {summary}"
        return
    assert verdict.symptom_right, f"expected {verdict.expected}, drill says {summary}"
    assert verdict.cause_first, f"expected {verdict.expected}, drill says {summary}"
    assert verdict.module_named is not False, f"expected {verdict.expected}, drill says {summary}"
    finding = next(f for f in drill["findings"] if f["symptom"] == module.EXPECT["symptom"])
    # the words come from the recipe of the cause that ranks first, filled with numbers (a
    # `{field}` left over; code in the words may hold braces: `{id(p) for p in ...}`)
    assert not re.search(r"\{\w+\}", finding["first_check"] + finding["fix_attempt"])
    assert any(ch.isdigit() for ch in finding["likely_causes"][0]["evidence"])


def test_a_consequence_in_another_symptom_names_its_root(tmp_path):
    # zero_grad missing: the flat_loss error names the root; the loss swings that follow
    # (a diverging warning) say they are likely its consequence, so the user fixes one bug
    program = load_program(ROOT / "tests" / "programs" / "mlp_zero_grad_missing_relus_die.py")
    program.main(tmp_path / "run")
    drill = json.loads((tmp_path / "run" / "drill.json").read_text())
    errors = [f for f in drill["findings"] if f["severity"] == "error"]
    assert [f["likely_cause"] for f in errors] == ["zero_grad_missing"]
    for f in drill["findings"]:
        if f["severity"] == "warning":
            assert "likely a consequence of zero_grad_missing" in f["likely_causes"][0]["evidence"]


def test_a_model_that_never_moves_gets_no_divergence_blamed_on_its_lr(tmp_path):
    # gradients cleared between backward() and step(): the weights never change, so the
    # loss swings only with the batches; that is no lr_too_high
    name = "mlp_zero_grad_between_backward_and_step.py"
    program = load_program(ROOT / "tests" / "programs" / name)
    program.main(tmp_path / "run")
    drill = json.loads((tmp_path / "run" / "drill.json").read_text())
    assert [(f["symptom"], f["likely_cause"]) for f in drill["findings"]] == [
        ("flat_loss", "optimizer_not_stepping")
    ]
