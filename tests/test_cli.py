"""The console script, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# the console script installed beside this interpreter, as `pip install` put it there
TRAINLENS = str(Path(sys.executable).parent / "trainlens")


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRAINLENS, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_demo_runs_the_examples_and_writes_their_drills(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", str(out))
    assert result.returncode == 0, result.stderr
    healthy = json.loads((out / "linear_regression" / "drill.json").read_text())
    crashed = json.loads((out / "shape_mismatch" / "drill.json").read_text())
    assert healthy["status"] == "healthy" and healthy["findings"] == []
    assert crashed["status"] == "failed"
    assert crashed["findings"][0]["likely_cause"] == "layer_input_mismatch"
    assert "layer_input_mismatch" in result.stdout and "drill.md" in result.stdout


def test_python_dash_m_and_version():
    result = subprocess.run(
        [sys.executable, "-m", "trainlens", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("trainlens ")


def test_unknown_command_is_a_usage_error():
    result = run_cli("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr
