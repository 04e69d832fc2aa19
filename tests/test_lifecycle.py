"""Issue 16 §1-§3: the run's life cycle under faults, in real subprocesses where a fault
ends the process. Each test asserts what survives on disk and what the user sees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import trainlens
from trainlens import _stream
from trainlens._errors import RunDirError, UsageError

PROGRAM = Path(__file__).with_name("lifecycle_program.py")
TRAINLENS = Path(sys.executable).with_name("trainlens")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(trainlens.__file__).parents[1])}


def run_program(run_dir: Path, action: str, at: int = -1, *extra: str, **kw):
    return subprocess.run(
        [sys.executable, str(PROGRAM), str(run_dir), action, str(at), *extra],
        capture_output=True, text=True, timeout=120, env=ENV, **kw,
    )  # fmt: skip


def start_program(run_dir: Path, action: str, at: int = -1, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(PROGRAM), str(run_dir), action, str(at), *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip


def diagnose(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TRAINLENS), "diagnose", str(run_dir), *args],
        capture_output=True, text=True, timeout=120, env=ENV,
    )  # fmt: skip


def trainlens_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "RuntimeWarning: trainlens" in line]


# --- signals and exits ----------------------------------------------------------------
def test_sigterm_writes_the_drill_then_ends_the_process_as_sigterm_would(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_program(run_dir, "sigterm", 30)
    assert proc.returncode == -signal.SIGTERM, proc.stderr[-2000:]
    assert "AFTER BLOCK" not in proc.stdout  # the process ended where SIGTERM ended it
    run = trainlens.load_run(run_dir)
    assert run.drill["ended"] == {"how": "terminated", "signal": "SIGTERM", "step": 30}
    assert run.drill["status"] != "failed"  # stopped from outside, not a training failure
    assert len(run.records.steps) == 30
    assert "terminated by SIGTERM at step 30" in (run_dir / "drill.md").read_text()
    assert not (run_dir / "stream").exists() and not (run_dir / ".trainlens.lock").exists()


def test_the_programs_own_sigterm_handler_keeps_precedence(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_program(run_dir, "sigterm-handled", 30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "USER HANDLER" in proc.stdout and "AFTER BLOCK" not in proc.stdout
    drill = trainlens.load_run(run_dir).drill
    assert drill["ended"] == {"how": "exited", "exit_code": 0, "step": 30}
    assert drill["status"] == "healthy" and drill["exception"] is None


def test_sys_exit_0_is_a_clean_early_stop_and_sys_exit_1_a_failure(tmp_path):
    proc = run_program(tmp_path / "ok", "sys_exit0", 40)
    assert proc.returncode == 0, proc.stderr[-2000:]
    drill = trainlens.load_run(tmp_path / "ok").drill
    assert drill["status"] == "healthy" and drill["steps"] == 40
    assert drill["ended"]["how"] == "exited"
    proc = run_program(tmp_path / "bad", "sys_exit1", 40)
    assert proc.returncode == 1
    assert trainlens.load_run(tmp_path / "bad").drill["status"] == "failed"


@pytest.mark.parametrize("action", ["sigkill", "os_exit"])
def test_a_killed_run_leaves_its_streamed_records_and_diagnose_rebuilds_the_drill(tmp_path, action):
    run_dir = tmp_path / "run"
    proc = run_program(run_dir, action, 25, "--checkpoint")
    assert proc.returncode in (-signal.SIGKILL, 3), proc.stderr[-2000:]
    assert not (run_dir / "drill.json").exists()
    with pytest.raises(RunDirError, match="trainlens diagnose"):
        trainlens.load_run(run_dir)
    # pandas reads what was streamed: every step that ended before the kill
    parts = sorted((run_dir / "stream" / "steps").glob("*.parquet"))
    steps = pd.concat([pd.read_parquet(p) for p in parts])
    assert steps["step"].tolist() == list(range(25))
    assert torch.load(run_dir / "checkpoint.pt").keys() == {
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    }

    result = diagnose(run_dir)
    assert result.returncode == 0, result.stderr
    assert "rebuilt from the records" in result.stdout and "at step 25" in result.stdout
    run = trainlens.load_run(run_dir)
    assert run.drill["ended"] == {"how": "rebuilt", "step": 25}
    assert run.drill["steps"] == 25 and len(run.records.steps) == 25
    assert len(run.records.losses) == 25
    assert not (run_dir / "stream").exists()


def test_sigkill_sent_from_outside_loses_at_most_the_step_in_flight(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_program(run_dir, "ready", 10)
    line = proc.stdout.readline()
    assert line.startswith("READY"), proc.stderr.read()
    ran = int(line.split()[1]) + 1  # steps that had ended when READY was printed
    proc.kill()
    proc.wait(timeout=60)
    assert diagnose(run_dir).returncode == 0
    on_disk = trainlens.load_run(run_dir).drill["steps"]
    assert ran <= on_disk <= ran + 1  # streamed at every step here; +1: the step in flight


# --- trainlens's own write failures ----------------------------------------------------
@pytest.mark.parametrize("action", ["fsize", "rmdir"])
def test_write_failures_become_one_warning_and_the_users_code_goes_on(tmp_path, action):
    run_dir = tmp_path / "run"
    proc = run_program(run_dir, action, 10)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "AFTER BLOCK" in proc.stdout
    assert Path(f"{run_dir}.after").exists()
    (warning,) = trainlens_warnings(proc.stderr)
    assert "could not write all of run" in warning and str(run_dir) in warning
    assert "lost records (run.json, *.parquet)" in warning  # says what was lost
    assert "Traceback" not in proc.stderr


def test_a_closed_stderr_pipe_does_not_end_the_program(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(PROGRAM), str(run_dir), "none"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    proc.stderr.close()  # the reader of stderr went away (`| head`, a closed log)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert "AFTER BLOCK" in out
    assert trainlens.load_run(run_dir).drill["status"] == "healthy"


def test_a_second_ctrl_c_during_the_final_write_still_leaves_a_loadable_run(run_dir):
    class SecondCtrlC:
        @trainlens.hookimpl
        def trainlens_artifacts(self, run_dir, drill, records):
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C again
            return []

    model = nn.Linear(4, 1)
    with pytest.raises(KeyboardInterrupt):
        with trainlens.watch(model, run_dir=run_dir, plugins=[SecondCtrlC()], quiet=True):
            nn.functional.mse_loss(model(torch.randn(8, 4)), torch.zeros(8, 1)).backward()
    run = trainlens.load_run(run_dir)  # the interrupt waited until the files were written
    assert run.drill["ended"]["how"] == "completed"
    assert (run_dir / "drill.md").exists()


# --- a run dir belongs to one run ------------------------------------------------------
def test_a_second_process_on_a_busy_run_dir_is_refused_at_entry(tmp_path):
    run_dir = tmp_path / "run"
    owner = start_program(run_dir, "wait", 5)
    try:
        assert owner.stdout.readline().strip() == "READY", owner.stderr.read()
        with pytest.raises(RunDirError, match=rf"in use by process {owner.pid}"):
            trainlens.watch(nn.Linear(2, 1), run_dir=run_dir).__enter__()
        # `trainlens diagnose` does not write into a live run either
        busy = diagnose(run_dir)
        assert busy.returncode == 2 and "in use by process" in busy.stderr
    finally:
        owner.communicate("\n", timeout=120)
    assert owner.returncode == 0
    assert trainlens.load_run(run_dir).drill["steps"] == 60  # the owner's run is whole


def test_the_lock_of_a_killed_run_is_not_stale_and_a_reused_run_dir_starts_empty(tmp_path):
    run_dir = tmp_path / "run"
    run_program(run_dir, "sigkill", 20, "--checkpoint")
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / ".trainlens.lock").exists()
    model = nn.Linear(4, 1)
    with pytest.warns(RuntimeWarning, match="held an earlier run") as caught:
        with trainlens.watch(model, run_dir=run_dir, quiet=True):
            nn.functional.mse_loss(model(torch.randn(8, 4)), torch.zeros(8, 1)).backward()
    assert len([w for w in caught if "earlier run" in str(w.message)]) == 1
    assert not (run_dir / "checkpoint.pt").exists()  # not this run's weights
    assert "checkpoint.pt" not in (run_dir / "README.md").read_text()
    previous = tmp_path / "run.previous"
    assert (previous / "checkpoint.pt").exists() and (previous / "stream").is_dir()


def test_a_folder_of_the_users_own_files_is_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    model = nn.Linear(4, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with trainlens.watch(model, run_dir=tmp_path, quiet=True):
            nn.functional.mse_loss(model(torch.randn(8, 4)), torch.zeros(8, 1)).backward()
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "a\\b", "a\x00b", "", "x\n"])
def test_run_ids_must_be_one_safe_folder_name(bad, tmp_path):
    with pytest.raises(UsageError, match=r"run_id .* is not usable"):
        trainlens.watch(nn.Linear(2, 1), run_id=bad)
    assert list(tmp_path.iterdir()) == []


# --- streaming ------------------------------------------------------------------------
def test_streamed_records_read_back_mid_run_equal_the_tables_and_stay_bounded(run_dir, monkeypatch):
    from trainlens import _records

    monkeypatch.setattr(_stream, "FIRST_STREAM_S", 0.0)
    monkeypatch.setattr(_stream, "STREAM_EVERY_S", 0.0)
    monkeypatch.setitem(_records.THINNING, "steps", _records.Thinning(head_steps=10, max_rows=64))
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(300):
            loss = nn.functional.mse_loss(model(torch.randn(8, 4)), torch.zeros(8, 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        streamed = _stream.load_stream(run_dir)
        in_memory = lens._state.tables["steps"].frame()
        files = list((run_dir / "stream" / "steps").glob("*.parquet"))
    pd.testing.assert_frame_equal(streamed.steps, in_memory, check_dtype=False)
    assert len(in_memory) <= 64 and len(files) <= _stream.MAX_PARTS + 1
    assert streamed.meta["run_id"] == lens.run_id
    assert not (run_dir / "stream").exists()  # the final files replace it


# --- trainlens diagnose ----------------------------------------------------------------
def test_diagnose_reruns_the_rules_on_a_finished_run_and_says_so_by_exit_code(tmp_path):
    from models import classification_data, mlp, train

    healthy, buggy, empty = tmp_path / "healthy", tmp_path / "buggy", tmp_path / "empty"
    train(mlp(), classification_data(), steps=30, watch=True, run_dir=healthy)
    before = json.loads((healthy / "drill.json").read_text())
    result = diagnose(healthy)
    assert result.returncode == 0, result.stderr
    after = json.loads((healthy / "drill.json").read_text())
    assert after["findings"] == before["findings"] and after["ended"]["how"] == "completed"

    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with trainlens.watch(model, opt, run_dir=buggy, quiet=True):
        x = torch.randn(64, 4)
        for _ in range(30):  # [N, 1] predictions against [N] targets: silent broadcast
            loss = nn.MSELoss()(model(x), x.sum(1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    result = diagnose(buggy)
    assert result.returncode == 1 and "shape_mismatch" in result.stdout

    empty.mkdir()
    result = diagnose(empty)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert diagnose(tmp_path / "missing").returncode == 2


# --- one plugin-call policy -------------------------------------------------------------
def test_broken_third_party_plugins_are_reported_in_the_drill_and_one_warning(run_dir):
    class Broken:
        @trainlens.hookimpl
        def trainlens_report_sections(self, drill, records):
            raise ValueError("section boom")

        @trainlens.hookimpl
        def trainlens_artifacts(self, run_dir, drill, records):
            raise OSError("artifact boom")

        @trainlens.hookimpl
        def trainlens_diagnose(self, records, catalogue):
            raise KeyError("rule boom")

    model = nn.Linear(4, 1)
    with pytest.warns(RuntimeWarning) as caught:
        with trainlens.watch(model, run_dir=run_dir, plugins=[Broken()], quiet=True) as lens:
            nn.functional.mse_loss(model(torch.randn(8, 4)), torch.zeros(8, 1)).backward()
    (warning,) = [str(w.message) for w in caught if "trainlens" in str(w.message)]
    assert "section boom" in warning and "artifact boom" in warning and "rule boom" in warning
    drill = json.loads((run_dir / "drill.json").read_text())
    hooks = sorted(e["hook"] for e in drill["plugin_errors"])
    assert hooks == ["trainlens_artifacts", "trainlens_diagnose", "trainlens_report_sections"]
    assert lens.drill["status"] == "healthy"  # the built-in rules and sections still ran
    assert "## Shape trace" in (run_dir / "drill.md").read_text()
