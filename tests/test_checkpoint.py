"""`watch(..., checkpoint=True)`: the last good weights, kept at bounded cost."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import trainlens


def overfit_with_val(run_dir, checkpoint):
    """The overfitting example's setup: val loss is best early, then climbs."""
    torch.manual_seed(0)
    w = torch.randn(10, 1)
    x, xv = torch.randn(32, 10), torch.randn(256, 10)
    y, yv = x @ w + 3 * torch.randn(32, 1), xv @ w + 3 * torch.randn(256, 1)
    model = nn.Sequential(nn.Linear(10, 128), nn.ReLU(), nn.Linear(128, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    best = (float("inf"), None)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True, checkpoint=checkpoint):
        for epoch in range(40):
            model.train()
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if epoch % 4 == 3:
                model.eval()
                with torch.no_grad():
                    for i in (0, 128):  # two val batches: their mean is the val loss
                        nn.MSELoss()(model(xv[i : i + 128]), yv[i : i + 128])
                    v = nn.functional.mse_loss(model(xv), yv).item()
                if v < best[0]:
                    best = (v, {k: t.clone() for k, t in model.state_dict().items()})
    return model, best


def test_checkpoint_keeps_the_weights_of_the_best_validation_loss(run_dir):
    model, (best_val, best_weights) = overfit_with_val(run_dir, checkpoint="best")
    saved = torch.load(run_dir / "checkpoint.pt")
    assert all(torch.equal(saved[k], best_weights[k]) for k in best_weights)
    assert not all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    meta = json.loads((run_dir / "run.json").read_text())["checkpoint"]
    assert meta["file"] == "checkpoint.pt" and meta["val_loss"] == pytest.approx(best_val)
    assert "best validation loss" in meta["reason"]
    assert "`checkpoint.pt`" in (run_dir / "README.md").read_text()


def test_checkpoint_before_the_first_non_finite_loss_has_finite_weights(run_dir):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 4)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True, checkpoint=True) as lens:
        for step in range(120):
            scale = 1.0 if step < 70 else float("nan")  # the data turns bad at step 70
            loss = nn.functional.mse_loss(model(x * scale), x.sum(1, keepdim=True))
            lens.log_loss(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
    saved = torch.load(run_dir / "checkpoint.pt")
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert not torch.isfinite(model.weight).all()
    meta = json.loads((run_dir / "run.json").read_text())["checkpoint"]
    assert meta["step"] == 50  # checked every 50 steps: the last check before step 70


def test_checkpoint_is_off_by_default_and_changes_no_number(tmp_path):
    plain, _ = overfit_with_val(tmp_path / "plain", checkpoint=False)
    kept, _ = overfit_with_val(tmp_path / "kept", checkpoint=True)
    assert not (tmp_path / "plain" / "checkpoint.pt").exists()
    assert all(
        torch.equal(a, b) for a, b in zip(plain.parameters(), kept.parameters(), strict=True)
    )


def test_a_bad_checkpoint_value_is_a_usage_error(run_dir):
    with pytest.raises(trainlens.UsageError, match="checkpoint must be"):
        trainlens.watch(nn.Linear(1, 1), checkpoint="last-epoch", run_dir=run_dir)


@pytest.mark.parametrize(
    ("bad", "steps", "saved_step"),
    [
        ({49}, 120, 0),  # read back at the end of step 49: seen at the check of step 50
        ({50}, 120, 0),  # the check's own step: its loss is read there
        ({55}, 60, 50),  # after the last check: seen at the block's end
        (set(), 60, 60),  # every loss finite: the final weights
    ],
)
def test_checkpoint_reads_the_losses_the_read_back_brought_and_the_checked_steps_own(
    run_dir, bad, steps, saved_step
):
    """No kernel per step: the check every 50 steps reads the training losses the read-back
    has just brought to the host, and its own step's loss. One non-finite loss (its
    gradients finite: the weights stay good) keeps the copy from before it."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 4)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True, checkpoint=True):
        for step in range(steps):
            loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
            if step in bad:
                loss = loss + torch.tensor(float("nan"))  # NaN, with finite gradients
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert torch.isfinite(model.weight).all()
    meta = json.loads((run_dir / "run.json").read_text())["checkpoint"]
    assert meta["step"] == saved_step, meta
    saved = torch.load(run_dir / "checkpoint.pt")
    if not bad:
        assert "final weights" in meta["reason"]
        assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
