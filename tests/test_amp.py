"""Mixed precision and accumulation: GradScaler's skipped steps and micro-batches stay clean."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import trainlens
from models import classification_data

STEPS = 40


def _amp_run(run_dir, dtype: torch.dtype, init_scale: float):
    torch.manual_seed(0)
    x, y = classification_data(n=256)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    loss_fn = nn.CrossEntropyLoss()
    scales = [scaler.get_scale()]
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for step in range(STEPS):
            i = (step * 16) % len(x)
            with torch.autocast("cpu", dtype=dtype):
                loss = loss_fn(model(x[i : i + 16]), y[i : i + 16])
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)  # skips opt.step() when the scaled gradients hold inf/NaN
            scaler.update()
            scales.append(scaler.get_scale())
    skipped = sum(b < a for a, b in itertools.pairwise(scales))
    return lens, skipped


@pytest.mark.parametrize(
    ("dtype", "init_scale"),
    [(torch.bfloat16, 2.0**16), (torch.float16, 2.0**24)],
    ids=["bf16", "fp16-skipping"],
)
def test_autocast_with_gradscaler_stays_clean_and_counts_skipped_steps(run_dir, dtype, init_scale):
    lens, skipped = _amp_run(run_dir, dtype, init_scale)
    if dtype is torch.float16:
        assert 2 <= skipped <= 12  # fp16 overflows at a scale of 2**24 until it backs off
    assert lens.drill["status"] == "healthy"
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]
    rec = lens.records
    # a skipped step is no optimizer step, and its backward pass is not accumulation
    assert rec.meta["steps"] == STEPS - skipped
    assert rec.meta["backward_passes"] == STEPS
    assert rec.steps["backward_passes"].eq(1).all()
    assert rec.meta.get("skipped_steps", 0) == skipped
    assert (rec.events["kind"] == "step_skipped").sum() == skipped
    losses = rec.train_loss()
    assert losses.iloc[-3:].mean() < 0.7 * losses.iloc[:3].mean()


def test_accumulation_over_four_micro_batches_is_one_step_and_clean(run_dir):
    torch.manual_seed(0)
    x, y = classification_data(n=256)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(3):
            for i in range(0, len(x), 8):
                micro = i // 8
                (loss_fn(model(x[i : i + 8]), y[i : i + 8]) / 4).backward()
                if micro % 4 == 3:
                    opt.step()
                    opt.zero_grad()
    rec = lens.records
    assert rec.meta["steps"] == 3 * 256 // 32
    assert rec.steps["backward_passes"].eq(4).all()
    assert "skipped_steps" not in rec.meta
    assert lens.drill["status"] == "healthy"
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]


def test_accumulation_with_autocast_and_gradscaler_stays_clean(run_dir):
    torch.manual_seed(0)
    x, y = classification_data(n=128)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    loss_fn = nn.CrossEntropyLoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(4):
            for i in range(0, len(x), 8):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = loss_fn(model(x[i : i + 8]), y[i : i + 8]) / 4
                scaler.scale(loss).backward()
                if i // 8 % 4 == 3:
                    scaler.step(opt)
                    scaler.update()
                    opt.zero_grad(set_to_none=True)
    assert lens.records.meta["steps"] == 4 * 128 // 32
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]
