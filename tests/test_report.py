"""`trainlens report`: the drill in the terminal, checked against golden files and
through the real console script."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest
from rich.console import Console

import trainlens
from report_runs import TeamPlugin, normalise, regression_run
from trainlens import _hookspecs
from trainlens._drill import build_drill, render_markdown
from trainlens._plugins import DEFAULT_PLUGINS, catalogue_for, diagnose, report_sections
from trainlens._report.terminal import DrillReport, extra_sections, load_report

GOLDEN = Path(__file__).parent / "golden"
TRAINLENS = str(Path(sys.executable).parent / "trainlens")


def render(renderable, width: int = 80) -> str:
    console = Console(record=True, width=width, color_system=None, highlight=False)
    console.print(renderable)
    return console.export_text()


def check_golden(name: str, text: str) -> None:
    """Compare with tests/golden/<name>; `UPDATE_GOLDEN=1 pytest ...` rewrites it.

    The numbers come from a real training run, whose last bits differ between machines
    (BLAS kernels, CPU features): a number may differ by one unit in its last shown digit
    (0.115 or 0.116), which can also move a word to the next line, widen a table column or
    move a point of the loss curve one row. Everything else must be as in the file.
    """
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 once and review it"
    problem = golden_difference(text, path.read_text(encoding="utf-8"))
    assert problem is None, (
        f"report differs from {path}: {problem}; if the change is intended, rerun with "
        "UPDATE_GOLDEN=1"
    )


_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[+-]\d+)?")
_CURVE_ROW = re.compile(r"^ *([-\d.e+]*) │(.*)$")


def golden_difference(text: str, golden: str) -> str | None:
    """Where `text` differs from `golden` beyond last-digit noise, or None."""
    rows, golden_rows = _curve(text), _curve(golden)
    if rows.keys() != golden_rows.keys():
        return f"loss curve columns {sorted(rows.keys() ^ golden_rows.keys())}"
    for col, marks in rows.items():
        expected = golden_rows[col]
        if [m for _, m in marks] != [m for _, m in expected] or any(
            abs(r - g) > 1 for (r, _), (g, _) in zip(marks, expected, strict=True)
        ):
            return f"loss curve column {col}: {marks} instead of {expected}"
    tokens, golden_tokens = _tokens(text), _tokens(golden)
    for got, want in zip(tokens, golden_tokens, strict=False):  # the length: below
        if _NUMBER.sub("#", got) != _NUMBER.sub("#", want):
            return f"{got!r} instead of {want!r}"
        for a, b in zip(_NUMBER.findall(got), _NUMBER.findall(want), strict=True):
            if not _close(a, b):
                return f"{got!r} instead of {want!r}"
    if len(tokens) != len(golden_tokens):
        return f"{len(tokens)} words instead of {len(golden_tokens)}"
    return None


def _curve(text: str) -> dict[int, list[tuple[int, str]]]:
    """Loss curve marks by column: (row, mark) from the top."""
    out: dict[int, list[tuple[int, str]]] = {}
    rows = [m.group(2) for m in map(_CURVE_ROW.match, text.splitlines()) if m]
    for r, line in enumerate(rows):
        for col, mark in enumerate(line):
            if mark != " ":
                out.setdefault(col, []).append((r, mark))
    return out


def _tokens(text: str) -> list[str]:
    """Words outside the loss curve's rows; rules (───) of any length read the same."""
    lines = [line for line in text.splitlines() if not _CURVE_ROW.match(line)]
    return [re.sub("─+", "─", word) for word in " ".join(lines).split()]


def _close(a: str, b: str) -> bool:
    """Equal up to one unit in the last digit shown (or 1%, for scientific notation)."""
    x, y = float(a), float(b)
    mantissa = b.split("e")[0]
    unit = 10.0 ** -len(mantissa.split(".")[1]) if "." in mantissa else 1.0
    if "e" in b:
        unit *= 10.0 ** int(b.split("e")[1])
    return abs(x - y) <= unit * 1.0001 or abs(x - y) <= 0.01 * abs(y)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    return subprocess.run([TRAINLENS, *args], capture_output=True, text=True, timeout=300, env=env)


def test_healthy_report_matches_its_golden_file(run_dir):
    lens = regression_run(run_dir, fixed=True)
    assert lens.drill["status"] == "healthy"
    report = load_report(run_dir)
    report.run_dir = None  # the folder differs per machine; its file list is tested below
    text = normalise(render(report), [lens.run_id])
    assert "No problems found" in text and "Loss curve" in text
    check_golden("report_healthy.txt", text)


def test_report_with_several_findings_matches_its_golden_file(run_dir):
    """Real records of a broadcasting loss, diagnosed by the built-in shape rule and a
    team's own rule (fixed set of rules, so the golden file does not move when trainlens
    gains rules), rendered with the team's report section."""
    lens = regression_run(run_dir, fixed=False)
    pm = pluggy.PluginManager(_hookspecs.PROJECT)
    pm.add_hookspecs(_hookspecs)
    from trainlens._rules import shape_mismatch

    pm.register(shape_mismatch)
    pm.register(TeamPlugin())
    findings = diagnose(pm, lens.records, catalogue_for(pm))
    drill = build_drill(lens.run_id, findings, lens.records.meta)
    report = DrillReport(drill, lens.records, extra_sections(pm, drill, lens.records))
    text = normalise(render(report), [lens.run_id])
    assert [f["symptom"] for f in drill["findings"]] == ["shape_mismatch", "flat_loss"]
    assert "loss_plateau_team" in text and "Team notes" in text and "team rule" in text
    check_golden("report_findings.txt", text)


def normalise_markdown(text: str, run_ids: list[str]) -> str:
    """`normalise` for drill.md: also its duration and its Memory section, which reads
    this machine's heap and free memory."""
    text = re.sub(r"(\*\*Duration:\*\*) \d+\.\d s", r"\1 X.X s", text)
    head, sep, rest = text.partition("\n## Memory\n")
    memory, after, tail = rest.partition("\n## ")
    memory = re.sub(r"\d+(\.\d+)? (B|KB|MB|GB|TB|PB)\b", "N XB", memory)
    memory = re.sub(r"peak N XB at step \d+", "peak N XB at step N", memory)
    return normalise(head + sep + memory + after + tail, run_ids)


def test_healthy_drill_md_matches_its_golden_file(run_dir):
    """drill.md as the finishing path wrote it; `UPDATE_GOLDEN=1` rewrites the file."""
    lens = regression_run(run_dir, fixed=True)
    text = normalise_markdown((run_dir / "drill.md").read_text(encoding="utf-8"), [lens.run_id])
    assert "**Status:** healthy" in text and "No problems found" in text
    for title in ("## Shape trace", "## Per-layer gradients and updates", "## Curves"):
        assert title in text, title
    check_golden("drill_healthy.md", text)


def test_drill_md_with_several_findings_matches_its_golden_file(run_dir):
    """The run and fixed rules of the terminal golden above, with trainlens's own report
    sections and the team's one: what drill.md shows of two findings."""
    lens = regression_run(run_dir, fixed=False)
    pm = pluggy.PluginManager(_hookspecs.PROJECT)
    pm.add_hookspecs(_hookspecs)
    from trainlens._rules import shape_mismatch

    pm.register(shape_mismatch)
    for name in DEFAULT_PLUGINS:
        if name.startswith("trainlens._report."):
            pm.register(importlib.import_module(name), name=name)
    pm.register(TeamPlugin())
    findings = diagnose(pm, lens.records, catalogue_for(pm))
    drill = build_drill(lens.run_id, findings, lens.records.meta)
    text = render_markdown(drill, report_sections(pm, drill, lens.records))
    text = normalise_markdown(text, [lens.run_id])
    assert [f["symptom"] for f in drill["findings"]] == ["shape_mismatch", "flat_loss"]
    assert "**Status:** failed" in text and "## Team notes" in text
    check_golden("drill_findings.md", text)


def test_report_fits_80_columns_and_a_pipe_gets_no_ansi_codes(run_dir):
    lens = regression_run(run_dir, fixed=False)
    result = run_cli("report", str(run_dir))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    for part in (lens.run_id, "failed", "loss_target_shape_mismatch", "result_after_fix",
                 "Loss curve", "Shape trace", "Per-layer gradients", "curves.png"):  # fmt: skip
        assert part in out, part
    as_json = run_cli("report", str(run_dir), "--json")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout) == json.loads((run_dir / "drill.json").read_text())


def test_layer_table_highlights_tiny_updates_and_missing_gradients(run_dir):
    import torch
    from torch import nn

    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 1)
            self.unused = nn.Linear(4, 1)  # never called: no gradient
            self.muted = nn.Linear(4, 1)  # called, times 0: a gradient of exactly 0

        def forward(self, x):
            return self.used(x) + 0.0 * self.muted(x)

    model = TwoBranches()
    opt = torch.optim.SGD(model.parameters(), lr=1e-7)  # updates ~1e-8 of the weights
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
        for _ in range(12):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    text = render(load_report(run_dir))
    rows = {
        line.split()[0]: line
        for line in text.splitlines()
        if line.strip().startswith(("used", "unused", "muted"))
    }
    assert "tiny updates" in rows["used.weight"]
    assert "no gradient" in rows["unused.weight"]
    assert "zero gradient" in rows["muted.weight"]
    assert "parameters stand out" in text


def test_report_shows_a_crash_and_the_failing_layer(run_dir):
    from trainlens._demo import load_example

    lens = load_example("shape_mismatch.py").main(run_dir=run_dir)
    text = render(load_report(run_dir))
    assert f"run {lens.run_id}" in text and "stopped by RuntimeError in classifier.1" in text
    lines = text.splitlines()
    row = max(i for i, line in enumerate(lines) if "classifier.1" in line and "Linear" in line)
    assert "raised" in " ".join(lines[row : row + 3])  # the shape trace ends there


def test_run_dir_readme_lists_the_files_present_including_a_plugins_picture(run_dir):
    class PicturePlugin:
        @trainlens.hookimpl
        def trainlens_artifacts(self, run_dir, drill, records):
            (run_dir / "extra.png").write_bytes(b"\x89PNG fake")
            return ["extra.png"]

    import torch
    from torch import nn

    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True, plugins=[PicturePlugin()]):
        for _ in range(5):
            loss = nn.functional.mse_loss(model(torch.randn(8, 2)), torch.randn(8, 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    readme = (run_dir / "README.md").read_text()
    present = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
    listed = sorted(line.split("`")[1] for line in readme.splitlines() if line.startswith("| `"))
    assert listed == present
    assert "extra.png" in listed and "checkpoint.pt" not in listed
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        "![" in (run_dir / "drill.md").read_text()
        and "(curves.png)" in (run_dir / "drill.md").read_text()
    )


def _write(path: Path, text: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "drill.json").write_text(text)
    return path


BAD_RUN_DIRS = {
    "missing_dir": (lambda tmp: tmp / "nope", "does not exist"),
    "no_drill_json": (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "has no drill.json"),
    "truncated_drill": (lambda tmp: _write(tmp / "trunc", '{"run_id": "x", "stat'), "corrupt"),
    "invalid_drill": (
        lambda tmp: _write(
            tmp / "invalid",
            '{"run_id": "x", "status": "healthy", '
            '"steps": 3, "findings": [{"symptom": "flat_loss"}]}',
        ),
        "not a valid trainlens drill",
    ),
    "newer_schema": (
        lambda tmp: _write(
            tmp / "newer",
            '{"schema_version": 99, "run_id": "x", '
            '"status": "healthy", "steps": 1, "findings": []}',
        ),
        "newer than this trainlens",
    ),
}


@pytest.mark.parametrize("case", BAD_RUN_DIRS, ids=list(BAD_RUN_DIRS))
def test_report_on_a_bad_run_dir_is_one_clear_line_and_exit_2(case, tmp_path):
    make, message = BAD_RUN_DIRS[case]
    path = make(tmp_path)
    result = run_cli("report", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainlens: error: ") and message in lines[0]


def test_report_json_on_a_corrupt_drill_is_the_same_clear_error(tmp_path):
    path = _write(tmp_path / "trunc", "{")
    result = run_cli("report", str(path), "--json")
    assert result.returncode == 2 and "corrupt" in result.stderr and result.stdout == ""


def test_report_without_records_still_shows_the_drill_and_says_what_is_missing(run_dir):
    lens = regression_run(run_dir, fixed=False)
    (run_dir / "run.json").unlink()  # e.g. only drill.json was copied off a cluster
    text = " ".join(render(load_report(run_dir)).split())
    assert "records not shown" in text and "has no run.json" in text
    assert lens.run_id in text and "loss_target_shape_mismatch" in text
