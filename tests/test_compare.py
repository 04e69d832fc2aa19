"""`trainlens compare FAILED FIXED`: result_after_fix filled from a real rerun."""

from __future__ import annotations

import json

from report_runs import regression_run
from test_report import run_cli


def test_compare_fills_result_after_fix_when_the_fix_worked(tmp_path):
    failed, fixed = tmp_path / "failed", tmp_path / "fixed"
    before = regression_run(failed, fixed=False)
    after = regression_run(fixed, fixed=True)
    result = run_cli("compare", str(failed), str(fixed))
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout
    assert f"before: {before.run_id}" in result.stdout and f"after: {after.run_id}" in result.stdout
    drill = json.loads((failed / "drill.json").read_text())
    (finding,) = drill["findings"]
    r = finding["result_after_fix"]
    assert r["symptom_gone"] is True and r["fixed_run_id"] == after.run_id
    assert (r["status_before"], r["status_after"]) == ("failed", "healthy")
    assert r["likely_cause_after"] is None and r["evidence_after"] is None
    assert "broadcast to [64, 64]" in r["evidence_before"]
    # the loss numbers are the runs' own
    train_before, train_after = before.records.train_loss(), after.records.train_loss()
    assert r["loss_before"]["train"]["last"] == float(f"{train_before.iloc[-1]:.6g}")
    assert r["loss_after"]["train"]["best"] == float(f"{train_after.min():.6g}")
    assert r["loss_after"]["val"]["last"] < 0.2 * r["loss_before"]["val"]["last"]
    assert r["summary"].startswith("Fixed: shape_mismatch is gone in rerun " + after.run_id)
    md = (failed / "drill.md").read_text()
    assert "**result_after_fix:** Fixed: shape_mismatch is gone" in md
    # the rerun's own drill is untouched, and a second compare just refreshes the result
    assert json.loads((fixed / "drill.json").read_text())["findings"] == []
    assert run_cli("compare", str(failed), str(fixed)).returncode == 0


def test_compare_says_not_fixed_when_the_symptom_is_still_there(tmp_path):
    failed, rerun = tmp_path / "failed", tmp_path / "rerun"
    regression_run(failed, fixed=False)
    again = regression_run(rerun, fixed=False, seed=1)  # "fixed" something else
    result = run_cli("compare", str(failed), str(rerun))
    assert result.returncode == 0, result.stderr
    r = json.loads((failed / "drill.json").read_text())["findings"][0]["result_after_fix"]
    assert r["symptom_gone"] is False
    assert r["likely_cause_after"] == "loss_target_shape_mismatch"
    assert r["summary"].startswith(
        f"Not fixed: shape_mismatch is still there in rerun {again.run_id}"
    )
    assert "still there" in result.stdout


def test_compare_on_bad_input_is_one_clear_line_and_exit_2(tmp_path):
    good = tmp_path / "good"
    regression_run(good, fixed=True)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "drill.json").write_text('{"run_id": ')
    cases = [
        ((str(tmp_path / "missing"), str(good)), "does not exist"),
        ((str(good), str(broken)), "corrupt"),
        ((str(good), str(good)), "same run"),
    ]
    for args, message in cases:
        result = run_cli("compare", *args)
        assert result.returncode == 2, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr
