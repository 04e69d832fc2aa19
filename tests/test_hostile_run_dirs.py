"""Run dirs from elsewhere are untrusted input to `report`, `report --json` and `compare`.

Real run dirs, then hand-edited and hostile: wrong field types, garbage, other encodings,
other parquet columns, escape sequences, a 1 MB evidence string. Each command either
renders correctly or exits 2 with one line on stderr; no control sequence from the run dir
reaches the terminal. The CLI runs in process (`trainlens._cli.main`): fast, and a
traceback fails the test; one case goes through the console script as well.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from report_runs import regression_run
from trainlens._cli import main

ESC_SEQUENCES = (
    "\x1b]0;owned window title\x07",  # OSC: set the window title
    "\x1b[2J\x1b[H",  # CSI: clear the screen, cursor home
    "\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07",  # OSC 52: write the clipboard
    "\x1b[8mhidden\x1b[0m",  # SGR 8: invisible text
    "\x9b31m",  # 8-bit CSI
    "\x1bP+q\x1b\\",  # DCS
    "\r\x08\x08over",  # carriage return and backspaces overwrite what was printed
    "\u202eevil\u202c",  # bidi override: reorders what a reader sees
)
HOSTILE = "".join(ESC_SEQUENCES)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A failed run, its fixed rerun and a rerun that fixed nothing (findings on both
    sides), made once and copied before each use."""
    base = tmp_path_factory.mktemp("real")
    regression_run(base / "failed", fixed=False)
    regression_run(base / "fixed", fixed=True)
    regression_run(base / "rerun", fixed=False, seed=1)
    return {name: base / name for name in ("failed", "fixed", "rerun")}


@pytest.fixture
def copy(runs, tmp_path_factory) -> Callable[[str], Path]:
    # outside tmp_path: conftest validates every drill under it, and these are broken
    where = tmp_path_factory.mktemp("hostile")

    def make(name: str) -> Path:
        return Path(shutil.copytree(runs[name], where / name))

    return make


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str) -> None:
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainlens: error: "), err
    assert "Traceback" not in err
    assert_no_control(err)


def assert_no_control(text: str) -> None:
    bad = re.findall("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", text)
    assert not bad, sorted(set(bad))


# --- hand-edited drills ------------------------------------------------------------------
def _edit_drill(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        drill = json.loads((run / "drill.json").read_text())
        result = change(drill)
        drill = drill if result is None else result
        (run / "drill.json").write_text(json.dumps(drill))

    return apply


def _set(*path_and_value):
    *path, value = path_and_value

    def change(drill: dict) -> None:
        target = drill
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return _edit_drill(change)


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        (run / name).write_bytes(data)

    return apply


def _folder(run: Path) -> None:
    (run / "drill.json").unlink()
    (run / "drill.json").mkdir()


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


BAD_DRILLS = {
    "steps as a string": _set("steps", "30"),
    "negative steps": _set("steps", -1),
    "run_id a number": _set("run_id", 123),
    "empty run_id": _set("run_id", ""),
    "unknown status": _set("status", "exploded"),
    "findings null": _set("findings", None),
    "findings an object": _set("findings", {"0": {}}),
    "a finding a string": _set("findings", ["shape_mismatch"]),
    "likely_causes null": _set("findings", 0, "likely_causes", None),
    "likely_causes empty": _set("findings", 0, "likely_causes", []),
    "a cause a list": _set("findings", 0, "likely_causes", [[1, 2]]),
    "confidence as a string": _set("findings", 0, "likely_causes", 0, "confidence", "0.9"),
    "confidence a bool": _set("findings", 0, "likely_causes", 0, "confidence", True),
    "cause evidence a number": _set("findings", 0, "likely_causes", 0, "evidence", 42),
    "cause id with spaces": _set("findings", 0, "likely_causes", 0, "id", "rm -rf"),
    "first_check null": _set("findings", 0, "first_check", None),
    "fix_attempt a list": _set("findings", 0, "fix_attempt", ["a"]),
    "module a number": _set("findings", 0, "module", 5),
    "step as a string": _set("findings", 0, "step", "3"),
    "severity unknown": _set("findings", 0, "severity", "fatal"),
    "symptom unknown": _set("findings", 0, "symptom", "spooky"),
    "result_after_fix a number": _set("findings", 0, "result_after_fix", 7),
    "finding evidence a list": _set("findings", 0, "evidence", [1]),
    "exception a string": _set("exception", "boom"),
    "exception type a number": _set("exception", {"type": 5}),
    "exception step a string": _set("exception", {"type": "RuntimeError", "step": "1"}),
    "duration a string": _set("duration_s", "1.5"),
    "created a number": _set("created", 5),
    "schema_version a string": _set("schema_version", "1"),
    "top level a list": _edit_drill(lambda d: [d]),
    "top level null": _write("drill.json", b"null"),
    "nested garbage": _set("findings", 0, "evidence", _nested(200)),
    "too deep for the parser": _write("drill.json", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    "not UTF-8": _write("drill.json", '{"run_id": "caf\xe9"}'.encode("latin-1")),
    "binary garbage": _write("drill.json", bytes(range(256)) * 4),
    "empty file": _write("drill.json", b""),
    "truncated": _write("drill.json", b'{"run_id": "x", "status": "fai'),
    "drill.json a folder": _folder,
    "missing drill.json": lambda run: (run / "drill.json").unlink(),
}


@pytest.mark.parametrize("case", BAD_DRILLS, ids=list(BAD_DRILLS))
@pytest.mark.parametrize("command", ["report", "report --json", "compare failed", "compare fixed"])
def test_a_malformed_drill_is_exit_2_and_one_line(case, command, copy, capsys):
    failed, fixed = copy("failed"), copy("rerun")
    BAD_DRILLS[case](failed if command != "compare fixed" else fixed)
    if command.startswith("compare"):
        args = ["compare", str(failed), str(fixed)]
    else:
        args = [*command.split(), str(failed)]
    code, out, err = cli(capsys, *args)
    assert_one_line_error(code, out, err)
    assert out == ""


# --- hand-edited records -----------------------------------------------------------------
def _frame(name: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        path = run / f"{name}.parquet"
        change(pd.read_parquet(path)).to_parquet(path, index=False)

    return apply


def _column(table: str, column: str, make: Callable[[pd.Series], object]):
    return _frame(table, lambda df: df.assign(**{column: make(df[column])}))


BAD_RECORDS = {
    "run.json not UTF-8": _write("run.json", b'{"steps": "\xff\xfe"}'),
    "run.json a list": _write("run.json", b"[1, 2, 3]"),
    "run.json truncated": _write("run.json", b'{"steps": 3'),
    "run.json too deep": _write("run.json", b"[" * 100_000 + b"]" * 100_000),
    "run.json nested garbage": _write("run.json", json.dumps({"x": _nested(100)}).encode()),
    "missing run.json": lambda run: (run / "run.json").unlink(),
    "losses with other columns": _frame("losses", lambda df: pd.DataFrame({"a": [1], "b": ["x"]})),
    "loss values as strings": _column("losses", "value", lambda s: s.astype(str)),
    "steps as strings": _column("losses", "step", lambda s: s.astype(str)),
    "infinite steps": _column("losses", "step", lambda s: s.astype(float) * float("inf")),
    "split as numbers": _column("losses", "split", lambda s: range(len(s))),
    "grad norms as lists": _column("params", "grad_norm", lambda s: [[1.0, 2.0]] * len(s)),
    "param names as bytes": _column("params", "param", lambda s: [b"w"] * len(s)),
    "losses.parquet garbage": _write("losses.parquet", b"PAR1 not really parquet PAR1"),
    "params.parquet empty file": _write("params.parquet", b""),
}


@pytest.mark.parametrize("case", BAD_RECORDS, ids=list(BAD_RECORDS))
def test_malformed_records(case, copy, capsys):
    """`report` shows the drill and says the records are not shown; `report --json` reads
    only the drill; `compare` needs the records: exit 2 and one line, either side."""
    for side in ("failed", "fixed"):
        failed, fixed = copy("failed"), copy("fixed")
        BAD_RECORDS[case](failed if side == "failed" else fixed)
        code, out, err = cli(capsys, "compare", str(failed), str(fixed))
        assert_one_line_error(code, out, err)
        shutil.rmtree(failed.parent)
        failed.parent.mkdir()

    run = copy("failed")
    BAD_RECORDS[case](run)
    code, out, err = cli(capsys, "report", str(run))
    assert code == 0 and err == "", err
    text = " ".join(out.split())
    assert "records not shown" in text and "loss_target_shape_mismatch" in text
    assert_no_control(out)
    code, out, err = cli(capsys, "report", "--json", str(run))
    assert code == 0 and json.loads(out)["status"] == "failed"


def test_shape_cells_that_are_not_json_leave_out_the_trace_not_the_report(copy, capsys):
    run = copy("failed")
    _column("shapes", "inputs", lambda s: ["{not json"] * len(s))(run)
    code, out, err = cli(capsys, "report", str(run))
    assert code == 0, err
    text = " ".join(out.split())
    assert "shape trace not shown: the records are malformed" in text
    assert "Loss curve" in text and "Per-layer gradients" in text

    fixed = copy("fixed")
    code, out, err = cli(capsys, "compare", str(run), str(fixed))
    assert code == 0, err  # drill.md is written without the section that cannot be made
    assert "result_after_fix" in (run / "drill.md").read_text()


# --- hostile text ------------------------------------------------------------------------
def _hostile_run(run: Path) -> None:
    drill = json.loads((run / "drill.json").read_text())
    drill["run_id"] = "run" + HOSTILE
    drill["created"] = HOSTILE
    drill["exception"] = {
        "type": "Error" + HOSTILE,
        "message": HOSTILE * 3,
        "phase": HOSTILE,
        "module": HOSTILE,
        "step": 3,
    }
    for f in drill["findings"]:
        f["module"] = "enc" + HOSTILE
        f["first_check"] = "look [bold red]here[/] " + HOSTILE
        f["fix_attempt"] = "`code" + HOSTILE + "` " + HOSTILE
        f["likely_cause"] = HOSTILE
        f["result_after_fix"] = {"summary": HOSTILE}
        for c in f["likely_causes"]:
            c["evidence"] = HOSTILE * 5
    (run / "drill.json").write_text(json.dumps(drill))
    meta = json.loads((run / "run.json").read_text())
    meta["compile"] = {"warning": "[link=http://evil]x[/link] " + HOSTILE}
    (run / "run.json").write_text(json.dumps(meta))
    _column("params", "param", lambda s: s + HOSTILE)(run)
    (run / f"file{ESC_SEQUENCES[0]}.txt").write_text("x")


def test_no_control_sequence_from_the_run_dir_reaches_a_pipe(copy, capsys):
    run = copy("failed")
    _hostile_run(run)
    code, out, err = cli(capsys, "report", str(run))
    assert code == 0, err
    assert_no_control(out)
    assert "\\x1b]0;owned window title\\x07" in out  # shown, escaped: the reader sees it
    assert "[bold red]here[/]" in out  # rich markup stays literal
    assert "What trainlens could not see" in out  # a plugin section, escaped as well

    code, out, err = cli(capsys, "report", "--json", str(run))
    assert code == 0 and "\x1b" not in out and "\x9b" not in out and "\u202e" not in out
    assert json.loads(out)["run_id"] == "run" + HOSTILE  # the same value, escaped as JSON

    code, out, err = cli(capsys, "compare", str(run), str(copy("fixed")))
    assert code == 0, err
    assert_no_control(out)


def test_report_json_of_a_drill_trainlens_wrote_is_its_file_byte_for_byte(copy, capsys):
    run = copy("fixed")
    code, out, _ = cli(capsys, "report", "--json", str(run))
    assert code == 0 and out == (run / "drill.json").read_text(encoding="utf-8")


def test_on_a_colour_terminal_only_trainlens_styles_are_sent(copy, capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "80")
    run = copy("failed")
    _hostile_run(run)
    code, out, _ = cli(capsys, "report", str(run))
    assert code == 0 and "\x1b[" in out  # colour is on
    styles_removed = re.sub(r"\x1b\[[0-9;]*m", "", out)  # SGR: colours and bold only
    assert_no_control(styles_removed)


def test_a_1_mb_evidence_string_is_cut_and_says_so(copy, capsys):
    run = copy("failed")
    _set("findings", 0, "likely_causes", 0, "evidence", "A" * 1_000_000)(run)
    code, out, err = cli(capsys, "report", str(run))
    assert code == 0, err
    assert "(cut: 997000 more characters)" in out
    assert len(out.splitlines()) < 200 and len(out) < 30_000
    many_lines = copy("fixed")
    _set("findings", [])(many_lines)  # (a healthy run: the exception message is the field)
    _set("exception", {"type": "RuntimeError", "message": "line\n" * 100_000})(many_lines)
    code, out, err = cli(capsys, "report", str(many_lines))
    assert code == 0 and len(out.splitlines()) < 100


def test_compare_into_a_read_only_run_dir_shows_the_comparison_and_says_so(
    copy, capsys, monkeypatch
):
    from trainlens import _finish
    from trainlens._report import compare

    failed, fixed = copy("failed"), copy("fixed")
    before = (failed / "drill.json").read_bytes()

    def read_only(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    # as root a chmod does not stop writes: refuse them where compare and the one
    # finishing path write
    monkeypatch.setattr(compare, "atomic_write_text", read_only)
    monkeypatch.setattr(_finish, "atomic_write_text", read_only)
    code, out, err = cli(capsys, "compare", str(failed), str(fixed))
    assert code == 2
    assert "Fixed: shape_mismatch is gone" in " ".join(out.split())  # the comparison
    assert "NOT saved" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "could not write result_after_fix" in lines[0]
    assert "Permission denied" in lines[0]
    assert (failed / "drill.json").read_bytes() == before


def test_the_console_script_keeps_the_promise(copy):
    """The real `trainlens` script: a hand-edited drill is exit 2 and one line."""
    run = copy("failed")
    _set("findings", 0, "likely_causes", None)(run)
    trainlens = str(Path(sys.executable).parent / "trainlens")
    result = subprocess.run(
        [trainlens, "report", str(run)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "drill.json is not a valid trainlens drill" in line and "likely_causes" in line


def test_diagnose_reads_a_hostile_run_dir_like_report_does(copy, capsys):
    # the rules rerun on records from elsewhere: what they name reaches the terminal escaped
    run = copy("failed")
    meta = json.loads((run / "run.json").read_text())
    meta["run_id"] = "evil\x1b]0;owned\x07\x1b[2J"
    (run / "run.json").write_text(json.dumps(meta))
    code, out, err = cli(capsys, "diagnose", str(run))
    assert code == 1, err  # the broadcast bug is found again
    assert "\x1b" not in out and "\\x1b" in out
    broken = copy("fixed")
    (broken / "losses.parquet").write_bytes(b"not parquet at all")
    assert_one_line_error(*cli(capsys, "diagnose", str(broken)))
