"""Real runs the report, compare and demo tests share, and a team's own plugin."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

import trainlens
from trainlens._format import num


def regression_run(run_dir: Path, *, fixed: bool, seed: int = 0) -> trainlens.Lens:
    """An MLP regression. Unfixed, its `[N, 1]` output meets a `[N]` target: MSELoss
    broadcasts to `[N, N]` (a shape_mismatch error) and the loss plateaus at the target
    variance. Fixed, the output is squeezed and the loss falls."""
    torch.manual_seed(seed)
    x, xv = torch.randn(64, 4), torch.randn(32, 4)
    y, yv = x.sum(1), xv.sum(1)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.MSELoss()

    def out(inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs).squeeze(-1) if fixed else model(inputs)

    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(30):
            model.train()
            loss = loss_fn(out(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.eval()
            with torch.no_grad():
                loss_fn(out(xv), yv)
    return lens


class TeamPlugin:
    """A team's own rule and report section, registered like trainlens's own."""

    @trainlens.hookimpl
    def trainlens_diagnose(self, records, catalogue):
        s = records.train_loss()
        if len(s) < 10 or s.iloc[-1] < 0.9 * s.iloc[0]:
            return []
        evidence = (
            f"train loss fell only {1 - s.iloc[-1] / s.iloc[0]:.0%} in {len(s)} steps "
            f"({num(s.iloc[0])} → {num(s.iloc[-1])})"
        )
        cause = trainlens.Cause("loss_plateau_team", 0.5, evidence)
        return [
            trainlens.Finding(
                symptom="flat_loss",
                severity="warning",
                likely_causes=[cause],
                first_check="Print the loss of the first and the last batch.",
                fix_attempt="Check the loss inputs, then the learning rate; rerun.",
            )
        ]

    @trainlens.hookimpl
    def trainlens_report_sections(self, drill, records):
        return [("Team notes", "Checked by the **team rule**:\n\n- loss plateau check")]


def normalise(text: str, run_ids: list[str]) -> str:
    """Fix what differs from run to run: ids, times, durations."""
    for i, run_id in enumerate(run_ids):
        text = text.replace(run_id, f"RUN-ID-{i}".ljust(len(run_id)))
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", "YYYY-MM-DDTHH:MM:SS+00:00", text)
    text = re.sub(r"  \d+\.\d s  ", "  X.X s  ", text)
    # the Memory section reads this machine's heap and free memory
    head, sep, memory = text.partition("\nMemory\n")
    # and wraps by the width of those numbers: compare it as one normalised paragraph
    memory = re.sub(r"\d+(\.\d+)? (B|KB|MB|GB|TB|PB)\b", "N XB", memory)
    memory = re.sub(r"peak N XB at step \d+", "peak N XB at step N", memory)
    memory = " ".join(memory.split())
    text = head + sep + memory
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
