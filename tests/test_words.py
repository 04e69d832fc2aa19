"""Words that agree with themselves, on the bundled examples as a user runs them: one
story per finding (summary, first check and fix), and advice a user can follow."""

from __future__ import annotations

import pytest

from trainlens._demo import examples, run_example


def _run(name: str, tmp_path):
    example = next(e for e in examples() if e.filename == f"{name}.py")
    lens, _, _ = run_example(example, tmp_path / name)
    return lens


def test_oom_where_not_one_sample_fits_tells_one_story(tmp_path):
    """examples/oom.py: an Upsample asking for petabytes. No batch size fits, so nothing
    may offer one: not the summary, not the first check, not the fix."""
    (f,) = [f for f in _run("oom", tmp_path).findings if f.symptom == "oom"]
    assert f.likely_cause == "batch_too_large"
    assert f.evidence["batch_plan"] == "none" and f.evidence["batch_fit"] is None
    assert "not even one sample fits" in f.top.evidence
    assert "not even one sample fits" in f.first_check and "no smaller batch" in f.first_check
    assert "make one sample smaller first" in f.fix_attempt
    for text in (f.top.evidence, f.first_check, f.fix_attempt):
        assert "would fit" not in text and "batch size 1 and" not in text, text
        assert "accumulate" not in text and "no layer this wide" not in text, text
    assert "(5)" not in f.fix_attempt  # no vocabulary layer in this model: no chunked loss


@pytest.mark.parametrize(
    ("name", "says", "never"),
    [
        ("diverging", "model.named_parameters()", ["e.g. `the model`", "a few parameters"]),
        ("non_finite", "set_detect_anomaly(True):", ["again under", "Run step"]),
    ],
)
def test_first_checks_say_what_a_user_can_do(tmp_path, name, says, never):
    f = _run(name, tmp_path).findings[0]
    assert says in f.first_check
    for phrase in never:
        assert phrase not in f.first_check


def test_a_warning_run_reads_as_a_warning_in_drill_html_and_readme(tmp_path):
    lens = _run("overfitting", tmp_path)
    assert lens.drill["status"] == "warning"
    page = (tmp_path / "overfitting" / "drill.html").read_text()
    assert 'style="background:#9a6700">warning<' in page
    assert "Status **warning**" in (tmp_path / "overfitting" / "README.md").read_text()
