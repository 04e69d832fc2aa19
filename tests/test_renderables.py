"""Each part of the report that decides something, on small hand-built inputs: what a
person reads (words, cuts, colours) in an 80-column terminal and in drill.md.

The goldens in test_report.py show whole reports of real runs; these pin the branches
those runs do not take (a section left out for lack of data, a cut list, a status colour).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from rich.console import Console

from trainlens._drill import render_markdown
from trainlens._records import Records
from trainlens._report import sections as built_in_sections
from trainlens._report.curves import LossMarks
from trainlens._report.html import drill_html, finding_html
from trainlens._report.summary import RunSummary
from trainlens._report.terminal import (
    MAX_CAUSES,
    MAX_FINDINGS,
    MAX_TERMINAL_ROWS,
    DrillReport,
    FindingPanel,
    Header,
    LayerTable,
    LossCurve,
    ShapeTrace,
)


def render(renderable) -> str:
    console = Console(record=True, width=80, color_system=None, highlight=False)
    console.print(renderable)
    return console.export_text()


def words(renderable) -> str:
    """The text with line breaks and padding folded, for phrases that may wrap."""
    return " ".join(render(renderable).replace("│", " ").split())


def style_of(renderable, text: str) -> str:
    """The style of the first rendered piece that holds `text`."""
    console = Console(width=80, color_system="truecolor", highlight=False)
    for segment in console.render(renderable, console.options):
        if text in segment.text:
            return str(segment.style)
    raise AssertionError(f"{text!r} not rendered")


def finding(**changes) -> dict:
    f = {
        "symptom": "flat_loss",
        "severity": "warning",
        "module": None,
        "step": None,
        "first_check": "Print the loss of the first batch.",
        "likely_causes": [{"id": "lr_too_low", "confidence": 0.6, "evidence": "lr 1e-7"}],
        "likely_cause": "lr_too_low",
        "fix_attempt": "Raise the learning rate.",
        "result_after_fix": None,
        "evidence": {},
    }
    return {**f, **changes}


def drill(**changes) -> dict:
    d = {
        "schema_version": 1,
        "run_id": "run-1",
        "status": "healthy",
        "steps": 12,
        "findings": [],
        "exception": None,
        "duration_s": None,
        "created": None,
    }
    return {**d, **changes}


# --- the one-line summary a watch block prints ------------------------------------------
def test_summary_line_colours_the_status_word_and_names_an_unusual_ending():
    for status, colour in (("healthy", "green"), ("warning", "yellow"), ("failed", "red")):
        summary = RunSummary(drill(status=status), [], Path("/elsewhere/run-1"))
        assert style_of(summary, status) == colour, status
        line = render(summary).strip()
        assert line == f"trainlens: run run-1 {status}, 12 steps; drill: /elsewhere/run-1/drill.md"
    exited = drill(status="failed", ended={"how": "exited", "exit_code": 3, "step": 5})
    text = words(RunSummary(exited, [], Path("/x")))
    assert "12 steps (stopped early with sys.exit (exit code 3) at step 5); drill:" in text
    for how in ("completed", "raised"):  # said elsewhere: nothing added
        assert "(" not in render(RunSummary(drill(ended={"how": how}), [], Path("/x")))


# --- header and finding panels ------------------------------------------------------------
def test_header_counts_findings_and_says_where_the_run_stopped():
    one = words(Header(drill(status="warning", findings=[finding()], duration_s=2.25)))
    assert "run run-1 warning 12 steps 2.2 s 1 finding" in one  # no "findings", no "s" on 1
    assert style_of(Header(drill(status="warning")), "warning") == "bold yellow"
    exc = {"type": "RuntimeError", "message": "x " * 400, "phase": "forward", "module": "",
           "step": 3}  # fmt: skip
    text = words(Header(drill(status="failed", exception=exc)))
    assert "0 findings" in text and " s " not in text  # no duration recorded: none shown
    assert "stopped by RuntimeError in (model) during forward at step 3: x x" in text
    assert text.count("x") < 160 and "..." in text  # a long message is cut at 300 characters
    no_module = words(Header(drill(exception={**exc, "module": None, "message": "m"})))
    assert "stopped by RuntimeError during forward at step 3: m" in no_module


def test_finding_panel_says_where_and_when_and_cuts_a_long_cause_list():
    causes = [
        {"id": f"cause_{n}", "confidence": 0.5, "evidence": f"seen {n}"}
        for n in range(MAX_CAUSES + 3)
    ]
    f = finding(severity="error", module="", step=7, likely_causes=causes)
    text = words(FindingPanel(2, "run-1", f))
    assert text.startswith("╭─ 2. flat_loss (error) in (model) at step 7 ─")
    assert f"{MAX_CAUSES}. cause_{MAX_CAUSES - 1} (0.50)" in text
    assert f"cause_{MAX_CAUSES} " not in text and "… 3 more causes in drill.json" in text
    assert "not yet: rerun with the fix, then `trainlens compare`" in text
    assert style_of(FindingPanel(2, "run-1", f), "╭") == "red"  # an error's border
    fixed = finding(result_after_fix={"summary": "loss now falls 90%", "loss": [1, 0.1]})
    text = words(FindingPanel(1, "run-1", fixed))
    assert "result_after_fix loss now falls 90%" in text and "not yet" not in text
    assert "(warning) ─" in text  # no module, no step: nothing after the severity
    assert style_of(FindingPanel(1, "run-1", fixed), "╭") == "yellow"


def test_report_without_findings_says_so_and_cuts_a_long_finding_list():
    assert "No problems found" in words(DrillReport(drill()))
    many = [finding(symptom=f"symptom_{i}") for i in range(MAX_FINDINGS + 2)]
    text = words(DrillReport(drill(status="warning", findings=many)))
    assert "No problems found" not in text
    assert f"symptom_{MAX_FINDINGS - 1}" in text and f"symptom_{MAX_FINDINGS} " not in text
    assert "… 2 more findings in drill.md" in text
    # a run that raised with no finding: no "nothing wrong" under its exception
    exc = {"type": "RuntimeError", "message": "boom", "phase": "backward", "step": 3}
    raised = words(DrillReport(drill(status="failed", exception=exc)))
    assert "No problems found" not in raised
    assert "No finding explains this exception" in raised


# --- the loss curve ---------------------------------------------------------------------
def _losses(train: list[float], val: list[float] = ()) -> tuple[pd.Series, pd.Series]:
    return pd.Series(train, dtype=float), pd.Series(val, index=range(len(val)), dtype=float)


def _curve_rows(text: str) -> list[str]:
    return [line.split("│", 1)[1] for line in text.splitlines() if "│" in line]


def test_loss_curve_draws_the_baseline_only_when_there_is_one():
    train, val = _losses([4.0 - 0.01 * i for i in range(20)])  # flat, near the baseline
    marks = LossMarks(4.0, 3.9, "the target variance", None, None)
    text = render(LossCurve(train, val, marks))
    assert "best constant prediction: 3.9 (the target variance)" in text
    assert "- best constant prediction" in text and "(log scale)" not in text
    rows = _curve_rows(text)
    assert any(set(r.strip()) <= {"-", "*"} and "-" in r for r in rows)  # the baseline row
    assert "*" in rows[0] and "*" not in "".join(rows[-3:])  # from 0: flat reads flat
    plain_text = render(LossCurve(train, val, None))
    assert "best constant" not in plain_text and "-" not in "".join(_curve_rows(plain_text))


def test_loss_curve_goes_log_over_two_decades_and_marks_non_finite_losses():
    train, val = _losses([10.0**-i for i in range(5)] + [math.nan], [1.0, 0.5])
    text = render(LossCurve(train, val, None))
    assert "(log scale)" in text and "! non-finite" in text
    assert "train: first 1 (step 0), last nan (step 5), best 1.00e-04 (step 4); first " in text
    assert "non-finite at step 5" in text
    assert _curve_rows(text)[0].rstrip().endswith("!")  # along the top, at the last step
    assert "o" in "".join(_curve_rows(text)) and "val: first 1 (step 0)" in text
    nothing = render(LossCurve(*_losses([math.inf, math.nan]), None))
    assert "no finite loss to draw" in nothing and "│" not in nothing


# --- the per-layer table ----------------------------------------------------------------
def _layers(rows: list[tuple], converged: bool = False) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["param", "grad", "norm", "ratio", "has_grad", "zero_grad"])
    df.attrs["converged"] = converged
    return df


def _row(text: str, param: str) -> str:
    return next(line.rstrip() for line in text.splitlines() if line.split()[:1] == [param])


def test_layer_table_names_huge_updates_and_non_finite_gradients():
    stats = _layers(
        [
            ("ok.weight", 0.1, 1.0, 1e-3, 1.0, False),
            ("big.weight", 5.0, 1.0, 0.5, 1.0, False),
            ("bad.weight", math.inf, 1.0, 1e-3, 1.0, False),
        ]
    )
    text = render(LayerTable(stats))
    assert _row(text, "big.weight").endswith("huge updates")
    assert _row(text, "bad.weight").endswith("non-finite gradient")
    assert _row(text, "ok.weight").endswith("0.001")  # no note
    assert "2 of 3 parameters stand out" in words(LayerTable(stats))
    assert style_of(LayerTable(stats), "bad.weight") == "red"
    assert style_of(LayerTable(stats), "big.weight") == "yellow"


def test_layer_table_does_not_judge_updates_once_the_loss_converged():
    rows = [("w", 1e-6, 1.0, 1e-8, 1.0, False), ("b", 1e-6, 1e-3, 0.9, 1.0, False)]
    text = words(LayerTable(_layers(rows, converged=True)))
    assert "tiny" not in text and "huge" not in text
    assert "no parameter stands out: gradients present; the loss converged" in text
    assert "tiny updates" in words(LayerTable(_layers(rows)))
    healthy = words(LayerTable(_layers([("w", 0.1, 1.0, 1e-3, 1.0, False)])))
    assert "no parameter stands out (update/param near 1e-3, gradients present)" in healthy


def test_layer_table_cuts_healthy_rows_but_always_shows_the_outliers():
    n = MAX_TERMINAL_ROWS + 10
    rows = [(f"layer{i}.weight", 0.1, 1.0, 1e-3, 1.0, False) for i in range(n)]
    rows[-1] = (f"layer{n - 1}.weight", 0.0, 1.0, 0.0, 0.0, False)  # the last one: no grad
    text = render(LayerTable(_layers(rows)))
    assert _row(text, f"layer{n - 1}.weight").endswith("no gradient")
    assert f"layer{MAX_TERMINAL_ROWS - 2}.weight" in text
    assert f"layer{MAX_TERMINAL_ROWS - 1}.weight" not in text  # its place went to the outlier
    assert "… 10 more parameters in drill.md" in text


# --- the shape trace --------------------------------------------------------------------
def test_shape_trace_cuts_long_traces_but_keeps_the_failing_module_last():
    n = MAX_TERMINAL_ROWS + 5
    rows = [
        {"module": f"blocks.{i}", "type": "Linear", "input": "[8, 4]", "output": "[8, 4]"}
        for i in range(n)
    ]
    rows.insert(3, {"module": "head", "type": "Linear", "input": "[8, 5]",
                    "output": "raised RuntimeError"})  # fmt: skip
    text = render(ShapeTrace(pd.DataFrame(rows)))
    lines = [line for line in text.splitlines() if line.strip()]
    assert f"blocks.{MAX_TERMINAL_ROWS - 1}" in text and f"blocks.{MAX_TERMINAL_ROWS} " not in text
    assert "head" in lines[-2] and "[8, 5] → raised RuntimeError" in lines[-2]
    assert lines[-1].strip() == "… 5 more modules in drill.md"
    assert style_of(ShapeTrace(pd.DataFrame(rows)), "head") == "bold red"


# --- drill.md sections that appear only with data ---------------------------------------
def _records(**frames: pd.DataFrame) -> Records:
    return Records(frames, {})


def test_built_in_sections_appear_only_for_the_records_there_are():
    assert built_in_sections.trainlens_report_sections(drill(), _records()) == []
    losses = pd.DataFrame({"step": [0, 1], "split": "train", "source": "x", "value": [1.0, 0.5]})
    report = words(DrillReport(drill(), _records(losses=losses)))
    assert "Loss curve" in report and "Shape trace" not in report and "Per-layer" not in report
    params = pd.DataFrame({"step": [0], "param": ["w"], "module": [""], "has_grad": [True]}).assign(
        grad_norm=0.5, param_norm=2.0, update_norm=0.002
    )
    found = built_in_sections.trainlens_report_sections(drill(), _records(params=params))
    assert [title for title, _ in found] == ["Per-layer gradients and updates"]
    assert "| w | 0.5 | 2 | 0.001 | 100% |" in found[0][1]
    report = words(DrillReport(drill(), _records(params=params)))
    assert "Per-layer" in report and "Loss curve" not in report and "Shape trace" not in report


def test_shape_cells_cut_long_input_lists_and_name_an_unusual_dtype():
    assert built_in_sections._shapes([[2, 3]] * 5, ["float16"] * 5) == (
        "[2, 3] [2, 3] [2, 3] +2 float16"
    )
    assert built_in_sections._shapes([[2]], ["float32"]) == "[2]"  # the default goes unsaid
    assert built_in_sections._shapes([[2], [3]], ["int64", "float32"]) == "[2] [3]"  # mixed
    assert built_in_sections._shapes([], []) == "-"


# --- drill.md and its HTML ----------------------------------------------------------------
def test_drill_md_says_how_a_run_ended_only_when_it_did_not_complete():
    assert "**Ended:**" not in render_markdown(drill(ended={"how": "completed"}))
    md = render_markdown(drill(status="failed", ended={"how": "terminated", "signal": "SIGTERM",
                                                      "step": 4}))  # fmt: skip
    assert "**Ended:** terminated by SIGTERM at step 4." in md
    assert "**Duration:**" not in md  # none recorded
    assert "**Duration:** 1.5 s" in render_markdown(drill(duration_s=1.46))


def test_drill_md_quotes_the_exception_and_cuts_a_huge_message():
    exc = {"type": "ValueError", "message": "y" * 5000, "phase": "backward", "module": "",
           "step": 2}  # fmt: skip
    md = render_markdown(drill(status="failed", exception=exc), [("Extra", "body\n\n")])
    assert "The run stopped with `ValueError` in `(model)` during backward:" in md
    assert "```\n" + "y" * 2000 + "\n```" in md
    assert md.endswith("## Extra\n\nbody\n")
    anywhere = render_markdown(drill(exception={**exc, "module": None, "phase": None}))
    assert "The run stopped with `ValueError` during the run:" in anywhere


def test_html_badge_colours_the_status_and_a_single_finding_has_no_number():
    page = drill_html(drill(), [], None, standalone=False)
    assert 'style="background:#1a7f37">healthy<' in page and "<!DOCTYPE" not in page
    odd = drill_html(drill(status="unknown"), [], None)
    assert 'style="background:#57606a">unknown<' in odd and odd.startswith("<!DOCTYPE html>")
    one = finding_html(finding(module="encoder.0", step=3))
    assert "<h3>flat_loss (warning) in <code>encoder.0</code> at step 3</h3>" in one
