"""DDP under torchrun: each rank records alone, rank 0 merges through files, no collective."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import trainlens
from trainlens._distributed import merge_rank_findings, unwrap_model

PROGRAM = Path(__file__).with_name("ddp_program.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One 2-rank gloo launch runs every scenario: healthy, bug on rank 1, rank 1 raises."""
    out = tmp_path_factory.mktemp("ddp")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(_free_port()), str(PROGRAM), str(out), "healthy", "bug", "raise",
    ]  # fmt: skip
    env = {**os.environ, "TRAINLENS_RANK_TIMEOUT": "20"}
    # the timeout is the guard: a rank hanging on a peer that died would exceed it
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env, cwd=out)
    return out, proc


def _drill(path: Path) -> dict:
    return json.loads((path / "drill.json").read_text())


def test_healthy_ddp_run_gives_one_healthy_merged_drill(ddp_runs):
    out, proc = ddp_runs
    run = out / "healthy"
    assert (run / "rank-0" / "done").is_file() and (run / "rank-1" / "done").is_file()
    drill = _drill(run)
    assert drill["status"] == "healthy", proc.stderr[-3000:]
    assert drill["findings"] == []
    assert drill["distributed"]["world_size"] == 2
    assert [r["status"] for r in drill["distributed"]["ranks"]] == ["healthy", "healthy"]
    # the merged records carry both ranks; names have no `module.` prefix from DDP
    loaded = trainlens.load_run(run)
    assert sorted(loaded.records.losses["rank"].unique()) == [0, 1]
    assert set(loaded.records.params["param"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert "" in set(loaded.records.shapes["module"])
    assert loaded.records.meta["wrappers"] == ["DistributedDataParallel"]
    assert "## Ranks" in (run / "drill.md").read_text()


def test_bug_on_one_rank_names_that_rank(ddp_runs):
    out, _ = ddp_runs
    drill = _drill(out / "bug")
    assert drill["status"] == "failed"
    (finding,) = drill["findings"]
    assert finding["likely_cause"] == "loss_target_shape_mismatch"
    assert finding["evidence"]["ranks"] == [1]
    assert "on rank 1 only" in finding["likely_causes"][0]["evidence"]
    assert _drill(out / "bug" / "rank-0")["findings"] == []
    assert "on rank 1 only" in (out / "bug" / "drill.md").read_text()


def test_rank_that_raises_does_not_hang_the_others_and_is_named(ddp_runs):
    out, proc = ddp_runs
    assert proc.returncode != 0  # the program failed, and it did so within the timeout
    drill = _drill(out / "raise")
    assert drill["status"] == "failed"
    assert drill["distributed"]["failed_ranks"][0] == 1
    assert drill["exception"]["rank"] == 1
    assert "planted failure on rank 1" in drill["exception"]["message"]
    assert _drill(out / "raise" / "rank-1")["exception"]["type"] == "RuntimeError"
    assert "Rank 1 failed first" in (out / "raise" / "drill.md").read_text()


def test_rank_that_never_reports_is_named_missing(run_dir, monkeypatch):
    # rank 0 of 2 with no rank 1 at all: the file protocol needs no process group
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TRAINLENS_RANK_TIMEOUT", "0.3")
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(3):
            loss = nn.functional.mse_loss(model(torch.randn(4, 3)), torch.randn(4, 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert (run_dir / "rank-0" / "drill.json").is_file()
    assert lens.run_dir == run_dir.resolve()
    assert lens.drill["status"] == "failed"
    assert lens.drill["distributed"]["missing_ranks"] == [1]
    text = (run_dir / "drill.md").read_text()
    assert "**Missing ranks:** 1" in text and "never reported within 0.3 s" in text


def test_findings_on_every_rank_merge_into_one_that_says_so():
    f = {
        "symptom": "flat_loss", "severity": "warning", "module": None, "step": 3,
        "first_check": "x", "likely_causes": [{"id": "lr_too_low", "confidence": 0.8,
        "evidence": "ratio 1e-9"}], "likely_cause": "lr_too_low", "fix_attempt": "y",
        "result_after_fix": None, "evidence": {},
    }  # fmt: skip
    (merged,) = merge_rank_findings({0: [f], 1: [f], 2: [f]}, 3)
    assert merged["evidence"]["ranks"] == [0, 1, 2]
    assert merged["likely_causes"][0]["evidence"].startswith("flat_loss/lr_too_low on all 3")
    (two,) = merge_rank_findings({0: [f], 2: [f], 1: []}, 3)
    assert "on ranks 0, 2 (of 3)" in two["likely_causes"][0]["evidence"]


def test_wrappers_are_looked_through_for_hooks_and_names():
    inner = nn.Sequential(nn.Linear(2, 2))
    assert unwrap_model(nn.DataParallel(inner)) is inner
    assert unwrap_model(torch.compile(nn.DataParallel(inner), backend="eager")) is inner
