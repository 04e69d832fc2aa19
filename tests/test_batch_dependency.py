"""shape_mismatch / batch_dim_mixing: the batch-dependency probe finds a sample's output
depending on other samples, names where the mixing starts, and changes nothing."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainlens
from batch_axis_models import (
    RNNModel,
    TransformerLM,
    corpus,
    get_batch,
    train_lm,
    train_rnn_by_hand,
)
from models import SmallCNN, image_data, train
from trainlens._probes._batch_dependency import check_batch_dependency


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


class ScratchBatchNorm(nn.Module):
    """Batch normalisation written from scratch, as courses teach it: the moving averages
    are used only when gradients are off, so an eval-mode pass with gradients on (the
    batch-dependency check's) still normalises with the batch's own statistics."""

    def __init__(self, features: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("moving_mean", torch.zeros(features))
        self.register_buffer("moving_var", torch.ones(features))

    def forward(self, x):
        if not torch.is_grad_enabled():
            x_hat = (x - self.moving_mean) / torch.sqrt(self.moving_var + 1e-5)
        else:
            mean, var = x.mean(0), ((x - x.mean(0)) ** 2).mean(0)
            x_hat = (x - mean) / torch.sqrt(var + 1e-5)
            with torch.no_grad():
                self.moving_mean.lerp_(mean, 0.1)
                self.moving_var.lerp_(var, 0.1)
        return self.gamma * x_hat + self.beta


def test_a_hand_written_batch_norm_is_a_warning_about_batch_statistics_not_an_error(run_dir):
    model = nn.Sequential(nn.Linear(6, 16), ScratchBatchNorm(16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    lens = _watch_steps(model, x, y, run_dir)
    [f] = lens.findings
    assert (f.symptom, f.severity, f.likely_cause, f.module) == (
        "shape_mismatch", "warning", "batch_dim_mixing", "1"
    )  # fmt: skip
    assert "statistics over the batch axis" in f.first_check
    assert "running statistics" in f.fix_attempt
    dep = lens.records.meta["batch_dependency"]
    assert dep["mixed_samples"] == 32 and dep["max_leak"] < 0.5


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


# --- the batch axis comes from the data ------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "run", "module", "axes"),
    [
        (
            "seq-first GRU, nanoGPT get_batch windows, update by hand",
            lambda d: train_rnn_by_hand(RNNModel("GRU"), d, windows="nanogpt"),
            "rnn",
            (0, 1),
        ),
        (
            "batch_first LSTM, batchify [T, B] windows, update by hand",
            lambda d: train_rnn_by_hand(
                RNNModel(batch_first=True), d, windows="seq", carry_hidden=False
            ),
            "rnn",
            (1, 0),
        ),
        (
            "seq-first TransformerEncoder, nanoGPT get_batch windows",
            lambda d: train_lm(TransformerLM(), d),
            "transformer_encoder.layers.0.self_attn",
            (0, 1),
        ),
        (
            "batch_first TransformerEncoder, [T, B] windows",
            lambda d: train_lm(TransformerLM(batch_first=True), d, windows="seq"),
            "transformer_encoder.layers.0.self_attn",
            (1, 0),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_recurrence_or_attention_along_the_data_batch_axis_is_batch_mixing(
    name, run, module, axes, run_dir
):
    lens = run(run_dir)
    f = lens.findings[0]
    assert (f.symptom, f.likely_cause, f.severity, f.module) == (
        "shape_mismatch",
        "batch_dim_mixing",
        "error",
        module,
    )
    batch, time = axes
    assert f"the data holds its 8 samples along axis {batch} of" in f.first_check
    assert f"shifted by one along axis {time} in 100% of positions" in f.first_check
    assert f"runs its recurrence or attention along axis {batch}" in f.first_check
    dep = lens.records.meta["batch_dependency"]
    assert (dep["batch_axis"], dep["time_axis"], dep["batch_axis_from"]) == (batch, time, "data")
    assert dep["axes"][str(time)]["mixed"] is False  # the model's own reading of its layout


@pytest.mark.parametrize(
    "run",
    [
        lambda d: train_rnn_by_hand(RNNModel(), d, windows="seq"),
        lambda d: train_rnn_by_hand(RNNModel(batch_first=True), d, windows="nanogpt"),
        lambda d: train_lm(TransformerLM(), d, windows="seq"),
        lambda d: train_lm(TransformerLM(batch_first=True), d),
    ],
    ids=["seq-first fed [T,B]", "batch_first fed [B,T]", "tf seq-first [T,B]", "tf bf [B,T]"],
)
def test_layouts_that_match_the_data_stay_clean(run, run_dir):
    lens = run(run_dir)
    dep = lens.records.meta["batch_dependency"]
    assert dep["checked"] and not dep["mixed"] and dep["batch_axis_from"] == "data"
    assert not [f for f in lens.findings if f.symptom == "shape_mismatch"]


def test_targets_passed_to_the_forward_decide_the_batch_axis(run_dir):
    """nanoGPT computes the loss inside `model(idx, targets)`: the targets are right there."""

    class LSTMLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.rnn, self.head = nn.Embedding(24, 16), nn.LSTM(16, 16), nn.Linear(16, 24)

        def forward(self, idx, targets=None):
            logits = self.head(self.rnn(self.wte(idx))[0])  # seq-first LSTM on [B, T]
            if targets is None:
                return logits, None
            return logits, F.cross_entropy(logits.view(-1, 24), targets.view(-1))

    data, g = corpus(), torch.Generator().manual_seed(0)
    model = LSTMLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(2):
            x, y = get_batch(data, 6, 10, g)
            _, loss = model(x, y)
            lens.log_loss(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
    dep = lens.records.meta["batch_dependency"]
    assert dep["data_evidence"]["from"] == "targets passed to the forward"
    assert dep["mixed"] and dep["batch_axis"] == 0 and dep["module"] == "rnn"
    assert lens.findings[0].likely_cause == "batch_dim_mixing"


def test_without_evidence_from_the_data_the_model_keeps_the_benefit_of_the_doubt():
    """Float features and no targets: the first axis that keeps samples apart is taken."""
    lstm = nn.LSTM(6, 8)  # seq-first; [7, 5, 6] could be either layout
    dep = check_batch_dependency(lstm, (torch.randn(7, 5, 6),))
    assert dep["checked"] and not dep["mixed"] and dep["batch_axis"] == 1
    assert dep["batch_axis_from"] == "model" and dep["axes"]["0"]["mixed"]


# --- the extra pass leaves buffers as they were ----------------------------------------------
class QueueModel(nn.Module):
    """MoCo-style: the forward enqueues keys into a buffer (under no_grad, in any mode),
    counts its calls in a buffer and rebinds a cache buffer."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.out = nn.Linear(8 + 16, 3)
        self.register_buffer("queue", torch.randn(16, 8))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("cache", torch.zeros(8))

    def forward(self, x):
        k = self.bn(self.enc(x))
        self.calls += 1
        with torch.no_grad():
            n = k.shape[0]
            i = int(self.ptr)
            self.queue[i : i + n] = F.normalize(k.detach(), dim=1)
            self.ptr.fill_((i + n) % 16)
            self.cache = k.detach().mean(0)  # rebound, not written in place
        sim = F.normalize(k, dim=1) @ self.queue.t()
        return self.out(torch.cat([k, sim], dim=1))


def test_the_check_restores_every_buffer_the_extra_forward_changes(run_dir):
    def run(watch: bool):
        torch.manual_seed(0)
        model = QueueModel()
        x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        block = trainlens.watch(model, opt, run_dir=run_dir, quiet=True) if watch else None
        if block is not None:
            block.__enter__()
        for _ in range(3):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if block is not None:
            block.__exit__(None, None, None)
            assert block.records.meta["batch_dependency"]["checked"]
        return model.state_dict()

    plain, watched = run(False), run(True)
    assert plain.keys() == watched.keys()
    assert all(torch.equal(plain[k], watched[k]) for k in plain)
    assert int(watched["calls"]) == 3 and int(watched["ptr"]) == 12


# --- the loss normalised over the batch, outside the model -----------------------------
def _classifier_run(run_dir, loss_of):
    torch.manual_seed(0)
    x = torch.randn(640, 20)
    y = (x @ torch.randn(20, 5)).argmax(1)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    return train(model, (x, y), steps=60, batch=32, lr=1e-3, loss_fn=loss_of, run_dir=run_dir)


def test_a_log_softmax_over_the_batch_in_the_loss_code_is_batch_mixing(run_dir):
    # the model keeps samples apart (its own check is clean); the loss code does not
    lens = _classifier_run(run_dir, lambda out, y: F.nll_loss(F.log_softmax(out, dim=0), y))
    assert lens.records.meta["batch_dependency"]["mixed"] is False
    (f,) = [f for f in lens.findings if f.symptom == "shape_mismatch"]
    assert (f.severity, f.likely_cause) == ("error", "batch_dim_mixing")
    assert "normalised over the batch, not over the classes" in f.top.evidence
    assert "F.log_softmax(out, dim=1)" in f.fix_attempt
    assert "out.exp().sum(dim=0)" in f.first_check


def test_a_clip_style_contrastive_loss_over_a_batch_similarity_matrix_stays_clean(run_dir):
    # logits [N, N] compared across the batch on purpose, raw (not normalised over dim 0)
    def clip(out, y):
        z = F.normalize(out, dim=1)
        logits = z @ z.roll(1, 0).t() / 0.1
        labels = torch.arange(len(out))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2

    lens = _classifier_run(run_dir, clip)
    assert not [f for f in lens.findings if f.symptom == "shape_mismatch"], lens.drill["findings"]


def test_a_listwise_ranking_loss_over_one_score_per_sample_stays_clean(run_dir):
    # ListNet: a softmax over the batch of [N, 1] scores, on purpose (one column, no classes)
    def listnet(scores, relevance):
        target = F.softmax(relevance.float()[:, None], dim=0)
        return F.kl_div(F.log_softmax(scores, dim=0), target, reduction="sum")

    torch.manual_seed(0)
    x = torch.randn(640, 20)
    relevance = (x @ torch.randn(20)).round()
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 1))
    lens = train(model, (x, relevance), steps=60, batch=32, lr=1e-3, loss_fn=listnet,
                 run_dir=run_dir)  # fmt: skip
    assert not [f for f in lens.findings if f.symptom == "shape_mismatch"], lens.drill["findings"]
