"""shape_mismatch / batch_dim_mixing: the batch-dependency probe finds a sample's output
depending on other samples, names where the mixing starts, and changes nothing."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import trainlens
from models import SmallCNN, image_data, train
from trainlens._probes._batchdep import check_batch_dependency


class ViewForPermute(nn.Module):
    """A seq-first encoder fed through `view` where `permute` was meant."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0)  # seq-first
        self.out = nn.Linear(16, 3)

    def forward(self, x):  # x: [batch, seq, 6]
        h = self.proj(x)
        h = h.view(h.shape[1], h.shape[0], -1)  # meant: h.permute(1, 0, 2)
        return self.out(self.encoder(h).mean(dim=0))


class AttentionWrongBatchFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 2)  # batch_first=False, fed [batch, seq, d]
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.proj(x)
        h, _ = self.attn(h, h, h)
        return self.out(h.mean(dim=1))


def _watch_steps(model, x, y, run_dir, steps=2):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            lens.log_loss(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return lens


def test_a_view_for_permute_is_an_error_naming_where_mixing_starts(run_dir):
    x, y = torch.randn(8, 5, 6), torch.randint(0, 3, (8,))
    lens = _watch_steps(ViewForPermute(), x, y, run_dir)
    f = lens.findings[0]
    assert (f.symptom, f.severity, f.likely_cause) == (
        "shape_mismatch",
        "error",
        "batch_dim_mixing",
    )
    assert f.module == ""  # the view sits in the root's forward, between proj and encoder
    assert "the input of `encoder` already mixes samples" in f.first_check
    assert "the output of `proj` does not" in f.first_check
    assert re.match(
        r"output of sample \d+ has gradient 0\.\d+ w\.r\.t\. sample \d+'s input "
        r"\(its own: 0\.\d+\)",
        f.top.evidence,
    ), f.top.evidence
    dep = f.evidence["batch_dependency"]
    assert dep["mixed"] and dep["grad_other"] > 0 and dep["batch"] == 8
    assert lens.drill["status"] == "failed"


def test_attention_with_the_wrong_batch_first_is_named_with_the_fix(run_dir):
    x, y = torch.randn(8, 5, 6), torch.randint(0, 3, (8,))
    lens = _watch_steps(AttentionWrongBatchFirst(), x, y, run_dir)
    f = lens.findings[0]
    assert (f.likely_cause, f.module) == ("batch_dim_mixing", "attn")
    assert "`attn` (MultiheadAttention) gets per-sample inputs and mixes them" in f.first_check
    assert "batch_first=True" in f.fix_attempt


def test_batchnorm_in_train_mode_and_a_seq_first_lstm_stay_clean():
    x, _ = image_data(n=8)
    cnn = SmallCNN().train()
    assert check_batch_dependency(cnn, (x,))["mixed"] is False

    class SeqFirst(nn.Module):  # [seq, batch, features], as batch_first=False wants
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(6, 8)
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            return self.out(self.rnn(x)[0])  # [seq, batch, 3]

    dep = check_batch_dependency(SeqFirst(), (torch.randn(7, 5, 6),))
    assert dep["checked"] and not dep["mixed"] and dep["batch_axis"] == 1


def test_batchnorm_without_running_stats_mixes_on_purpose_and_is_not_flagged(run_dir):
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16, track_running_stats=False),
                          nn.ReLU(), nn.Linear(16, 3))  # fmt: skip
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    lens = _watch_steps(model, x, y, run_dir)
    dep = lens.records.meta["batch_dependency"]
    assert dep["mixed"] and dep["module"] == "1"  # measured...
    assert lens.findings == []  # ...and known to be by design


def test_the_check_changes_no_parameter_grad_running_stat_flag_or_rng():
    torch.manual_seed(3)
    model = SmallCNN()
    model.train()
    model.head[1].eval()  # a caller's odd mix of flags must survive exactly
    flags = [m.training for m in model.modules()]
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    dep = check_batch_dependency(model, (image_data(n=8)[0],))
    assert dep["checked"] and not dep["mixed"]
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), rng)


@pytest.mark.parametrize("steps", [3])
def test_a_healthy_watched_run_records_a_clean_check(steps, run_dir):
    lens = train(SmallCNN(), image_data(), steps=steps, run_dir=run_dir)
    dep = lens.records.meta["batch_dependency"]
    assert dep["checked"] and not dep["mixed"] and dep["max_leak"] == 0.0
    assert lens.findings == []


def test_a_model_that_fails_the_extra_pass_is_skipped_not_broken(run_dir):
    class OnlyOnce(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("second call")
            return self.lin(x)

    model = OnlyOnce()
    with trainlens.watch(model, run_dir=run_dir, quiet=True) as lens:
        nn.MSELoss()(model(torch.randn(4, 4)), torch.zeros(4, 2)).backward()
    dep = lens.records.meta["batch_dependency"]
    assert not dep["checked"] and "RuntimeError: second call" in dep["skipped"]
    assert lens.drill["status"] == "healthy"
