"""What the loss is fed, as the loss-input statistics record it: a small input and target are
copied on the sampled step and reduced at the read-back with the other steps', a large one
on the step; either way the numbers are the same."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

import trainlens
from trainlens._probes import _loss_inputs

BATCH_COLUMNS = ["prob_dev_batch", "logprob_dev_batch"]


def _data(kind: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 8, generator=g)
    if kind == "classes":
        y = torch.randint(0, 5, (2048,), generator=g)
        y[::11] = -100  # ignored positions (padding)
    elif kind == "probabilities":
        y = torch.softmax(torch.randn(2048, 5, generator=g), 1)
    elif kind == "binary":
        y = (x[:, :1] > 0.3).float()
    else:  # regression targets far from zero, drifting: the pooled variance must hold
        y = x[:, :3] * torch.tensor([1.0, 10.0, 0.1]) + 1e4
    return x, y


CASES = {
    # loss, outputs, targets
    "cross_entropy": (lambda: nn.CrossEntropyLoss(label_smoothing=0.1), 5, "classes"),
    "class_probabilities": (nn.CrossEntropyLoss, 5, "probabilities"),
    "nll_on_log_softmax": (nn.NLLLoss, 5, "classes"),
    "bce_with_logits": (nn.BCEWithLogitsLoss, 1, "binary"),
    "mse": (nn.MSELoss, 3, "regression"),
}


def _run(run_dir, case: str, steps: int = 230, anew: bool = False) -> pd.DataFrame:
    """`anew`: a loss module made anew every step, each kept alive (so no two share an id)."""
    make_loss, outputs, kind = CASES[case]
    made = []
    x, y = _data(kind)
    torch.manual_seed(0)
    model = nn.Linear(8, outputs)
    if case == "nll_on_log_softmax":
        model = nn.Sequential(model, nn.LogSoftmax(1))
    loss_fn = make_loss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for s in range(steps):
            # an epoch's short last batch now and then: steps of two shapes interleave
            i, n = (s * 64) % 1984, 64 if s % 9 != 8 else 13
            target = y[i : i + n] + 0.05 * s if kind == "regression" else y[i : i + n]
            if anew:
                loss_fn = make_loss()
                made.append(loss_fn)
            loss = loss_fn(model(x[i : i + n]), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return lens.records.loss_inputs.sort_values("step").reset_index(drop=True)


@pytest.mark.parametrize("case", CASES)
def test_a_small_loss_input_reduced_at_the_read_back_gives_the_numbers_of_the_step(
    tmp_path, monkeypatch, case
):
    later = _run(tmp_path / "later", case)
    with monkeypatch.context() as m:
        m.setattr(_loss_inputs, "DEFERRED_ELEMENTS", 0)  # everything on the step
        on_step = _run(tmp_path / "on_step", case)
    with monkeypatch.context() as m:
        m.setattr(_loss_inputs, "MAX_PENDING_ELEMENTS", 1)  # each copy reduced at once
        each = _run(tmp_path / "each", case)

    # past the warm-up of the running prior: the steps that keep the last one are in
    assert len(later) > _loss_inputs.PRIOR_WARMUP + 2 * _loss_inputs.PRIOR_EVERY
    assert later["baseline"].notna().all()
    if case == "mse":
        assert later["target_rms"].iloc[-1] == pytest.approx(1e4, rel=2e-3)
    same = [c for c in later.columns if c not in BATCH_COLUMNS]
    for frame in (on_step, each):
        pd.testing.assert_frame_equal(later[same], frame[same], rtol=1e-5, atol=1e-6)
        # the batch-axis look: on the step only for the loss's first sampled steps, at the
        # read-back for all of them (it costs nothing there)
        looked = frame["logprob_dev_batch"].notna()
        pd.testing.assert_frame_equal(
            later.loc[looked, BATCH_COLUMNS], frame.loc[looked, BATCH_COLUMNS], rtol=1e-5
        )
    if case in ("cross_entropy", "class_probabilities", "nll_on_log_softmax"):
        assert on_step["logprob_dev_batch"].notna().sum() == _loss_inputs.BATCH_LOOKS
        assert later["logprob_dev_batch"].notna().all()


def test_a_class_prior_counts_every_target_but_the_ignored_ones(tmp_path):
    rows = _run(tmp_path, "nll_on_log_softmax", steps=3)
    _, y = _data("classes")
    seen = torch.cat([y[0:64], y[64:128], y[128:192]])
    seen = seen[seen != -100]
    p = torch.bincount(seen, minlength=5).double() / len(seen)
    entropy = -(p * p.log()).sum().item()
    assert rows["baseline"].iloc[-1] == pytest.approx(entropy, rel=1e-5)
    assert not math.isnan(rows["prob_dev_batch"].iloc[-1])


@pytest.mark.parametrize("case", ["cross_entropy", "mse"])
def test_a_loss_module_made_anew_every_step_keeps_one_running_prior(tmp_path, case):
    """`nn.CrossEntropyLoss()(out, y)` in the loop is one loss: its prior (the baseline a
    flat loss is measured against) pools every step's targets, as one instance's does."""
    once = _run(tmp_path / "once", case, steps=120)
    anew = _run(tmp_path / "anew", case, steps=120, anew=True)
    assert once["baseline"].notna().all()
    pd.testing.assert_frame_equal(once, anew, rtol=1e-6, atol=1e-9)
