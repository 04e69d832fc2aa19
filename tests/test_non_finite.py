"""non_finite: the first NaN/Inf is an error that names where it was made and when:
a module, a parameter gradient, the data itself, or a divergence that overflowed."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import trainlens
from models import classification_data, mlp


def finding(run_dir, symptom="non_finite"):
    """The finding as a user reads it back from drill.json."""
    drill = trainlens.load_run(run_dir).drill
    found = [f for f in drill["findings"] if f["symptom"] == symptom]
    assert len(found) == 1, drill["findings"]
    assert drill["status"] == "failed"
    return found[0]


def run(model, run_dir, *, steps=12, lr=1e-2, opt=torch.optim.Adam, loss_fn=None, batch=None,
        **watch):  # fmt: skip
    """A plain loop; `batch(step)` gives (x, y) for each step."""
    x, y = classification_data(n=128)
    batch = batch or (lambda step: (x[:16], y[:16]))
    optimizer = opt(model.parameters(), lr=lr)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True, **watch) as lens:
        for step in range(steps):
            xb, yb = batch(step)
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return lens


class LogOfZeroAt(nn.Module):
    """Planted bug: `torch.log(x - x)` on one step (a log of 0: -inf)."""

    def __init__(self, step: int):
        super().__init__()
        self.bad_step, self.calls = step, 0

    def forward(self, x):
        if not self.training:  # trainlens's one batch-dependency pass runs in eval mode
            return x
        self.calls += 1
        return torch.log(x - x) if self.calls - 1 == self.bad_step else x


def test_log_of_zero_names_the_module_and_the_step(run_dir):
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), LogOfZeroAt(7), nn.Linear(16, 3)
    )
    run(model, run_dir)
    f = finding(run_dir)
    assert (f["severity"], f["likely_cause"], f["module"], f["step"]) == (
        "error", "numerical_instability", "3", 7,
    )  # fmt: skip
    assert "LogOfZeroAt" in f["likely_causes"][0]["evidence"]
    assert "held -Inf values" in f["likely_causes"][0]["evidence"]  # log of 0, not 0/0
    assert "set_detect_anomaly(True)" in f["first_check"] and "`3`" in f["first_check"]
    assert "clamp_min" in f["fix_attempt"]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(16, 16)
        self.out = nn.Linear(16, 16)

    def forward(self, x):
        h = self.inner(x)
        return self.out(h / (h - h))  # division by zero between two submodules


def test_division_by_zero_in_a_parents_forward_names_the_parent(run_dir):
    model = nn.Sequential(nn.Linear(8, 16), Block(), nn.Linear(16, 3))
    run(model, run_dir, steps=3)
    f = finding(run_dir)
    assert (f["likely_cause"], f["module"], f["step"]) == ("numerical_instability", "1", 0)
    assert "between its submodules" in f["likely_causes"][0]["evidence"]


class OverwritesItsChildsOutput(nn.Module):
    """Planted bug: the parent writes a log of 0 into its child's output, in place."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(16, 16)

    def forward(self, x):
        h = self.inner(x)
        with torch.no_grad():
            h[:, 0] = torch.log(h[:, 0] * 0)  # -inf, into the tensor `inner` returned
        return h


def test_a_parent_writing_into_its_childs_output_is_checked_again_and_named(run_dir):
    # the parent returns the very tensor its child returned (checked already this step),
    # changed in place since: checked again, and the parent is named, not the child
    model = nn.Sequential(nn.Linear(8, 16), OverwritesItsChildsOutput(), nn.Linear(16, 3))
    lens = run(model, run_dir, steps=2)
    bad = lens.records.nonfinite
    bad = bad[bad["step"] == 0]  # after it the NaN gradients have reached every layer
    first = bad.sort_values("order").iloc[0]
    assert (first["kind"], first["name"], first["value"]) == ("output", "1", float("-inf"))
    assert "1.inner" not in set(bad["name"])
    f = finding(run_dir)
    assert (f["likely_cause"], f["module"], f["step"]) == ("numerical_instability", "1", 0)


class SqrtOfDifference(nn.Module):
    """Forward is finite (adds sqrt(0) = 0); its backward is inf - inf = NaN."""

    def forward(self, x):
        return x + torch.sqrt(x - x)


def test_nan_made_in_backward_names_the_parameter_gradient(run_dir):
    model = nn.Sequential(nn.Linear(8, 16), SqrtOfDifference(), nn.Linear(16, 3))
    run(model, run_dir, steps=4, opt=torch.optim.SGD, lr=0.1)
    f = finding(run_dir)
    assert (f["likely_cause"], f["step"], f["module"]) == ("numerical_instability", 0, "0")
    assert "gradient of `0." in f["likely_causes"][0]["evidence"]
    assert "backward" in f["likely_causes"][0]["evidence"]


def test_a_nan_in_the_input_batch_at_step_5_is_bad_input_data(run_dir):
    x, y = classification_data(n=128)

    def batch(step):
        xb = x[:16].clone()
        if step == 5:
            xb[3, 2] = float("nan")
        return xb, y[:16]

    run(mlp(), run_dir, batch=batch)
    f = finding(run_dir)
    assert (f["likely_cause"], f["step"], f["module"]) == ("bad_input_data", 5, None)
    assert "model input (input 0): NaN" in f["likely_causes"][0]["evidence"]
    assert "torch.isfinite(x).all()" in f["first_check"] and "step 5" in f["first_check"]


def test_an_inf_target_is_bad_input_data_naming_the_loss(run_dir):
    x, _ = classification_data(n=128)
    y = torch.randn(128, 1)

    def batch(step):
        yb = y[:16].clone()
        if step == 4:
            yb[0] = float("inf")
        return x[:16], yb

    run(mlp(d_out=1), run_dir, batch=batch, loss_fn=nn.MSELoss(), opt=torch.optim.SGD)
    f = finding(run_dir)
    assert (f["likely_cause"], f["step"]) == ("bad_input_data", 4)
    assert "target of MSELoss: +Inf" in f["likely_causes"][0]["evidence"]


def test_a_nan_after_the_loss_blew_up_blames_the_learning_rate(run_dir):
    x, _ = classification_data(n=128)
    x = x * 10

    def batch(step):
        return x[:32], x[:32, :1] * 3

    lens = run(mlp(d_out=1), run_dir, steps=20, opt=torch.optim.SGD, lr=0.5,
               loss_fn=nn.MSELoss(), batch=batch)  # fmt: skip
    f = finding(run_dir)
    ids = [c["id"] for c in f["likely_causes"]]
    assert ids[0] == "lr_too_high" and "exploding_gradient" in ids, ids
    assert "before the first NaN/Inf" in f["likely_causes"][0]["evidence"]
    assert "diverging" not in {x.symptom for x in lens.findings}  # one finding, not two


def test_a_nan_after_gradients_grew_for_many_steps_is_an_exploding_gradient(run_dir):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g) * 3
    w = torch.randn(8, 1, generator=g)
    model = nn.Linear(8, 1)
    with torch.no_grad():  # start next to the solution: tiny gradients, tiny updates
        model.weight.copy_(w.T + 0.01 * torch.randn(1, 8, generator=g))
        model.bias.zero_()
    run(model, run_dir, steps=260, opt=torch.optim.SGD, lr=0.08, loss_fn=nn.MSELoss(),
        batch=lambda step: (x, x @ w))  # fmt: skip
    f = finding(run_dir)
    assert f["likely_cause"] == "exploding_gradient", f["likely_causes"]
    assert "orders of magnitude" in f["likely_causes"][0]["evidence"]


def test_grad_scaler_skipping_a_few_overflowing_steps_stays_clean(run_dir):
    """Mixed precision: inf gradients on a few steps are what GradScaler is for."""
    x, y = classification_data(n=128)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu")
    loss_fn = nn.CrossEntropyLoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for step in range(30):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn(model(x[:16]), y[:16])
            opt.zero_grad()
            overflow = 1e38 if step in (3, 4, 11) else 1.0  # the scaled backward overflows
            scaler.scale(loss * overflow).backward()
            scaler.step(opt)  # skips opt.step() on those steps
            scaler.update()
    assert lens.drill["steps"] == 27
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]


def test_a_nan_on_a_step_that_was_not_sampled_names_the_step_and_how_to_look(run_dir):
    model = nn.Sequential(nn.Linear(8, 16), LogOfZeroAt(113), nn.Linear(16, 3))
    run(model, run_dir, steps=116, sample_every=1000)  # step 113 is not sampled
    f = finding(run_dir)
    assert (f["likely_cause"], f["step"]) == ("numerical_instability", 113)
    assert "not a sampled step" in f["likely_causes"][0]["evidence"]
    assert "sample_every=1" in f["first_check"]


def test_a_nan_input_on_an_unsampled_step_is_not_called_finite_nor_blamed_on_a_later_layer(
    run_dir,
):
    # step 13 is not sampled; the NaN loss's gradient makes the weights NaN, so the next
    # checked step (14) sees `0`'s output NaN from its weights, not from what broke
    x, y = classification_data(n=128)

    def batch(step):
        xb = x[:16].clone()
        if step == 13:
            xb[3, 2] = float("nan")
        return xb, y[:16]

    run(mlp(), run_dir, steps=20, batch=batch)
    f = finding(run_dir)
    assert (f["likely_cause"], f["step"]) == ("numerical_instability", 13)
    evidence = f["likely_causes"][0]["evidence"]
    assert "input, targets and module outputs were not checked" in evidence
    assert "finite input" not in evidence
    assert "the weights were non-finite too" in evidence


def test_a_custom_loss_taking_log_of_zero_blames_the_loss_computation(run_dir):
    class LogLoss(nn.modules.loss._Loss):
        def forward(self, probs, target):
            return -torch.log(probs.gather(1, target[:, None]) * 0).mean()

    model = nn.Sequential(nn.Linear(8, 3), nn.Softmax(dim=1))
    run(model, run_dir, steps=3, loss_fn=LogLoss())
    f = finding(run_dir)
    assert (f["likely_cause"], f["step"], f["module"]) == ("numerical_instability", 0, None)
    assert "loss computation itself" in f["likely_causes"][0]["evidence"]


class MaskedPool(nn.Module):
    """Attention pooling with an additive float mask: -inf in the input on purpose."""

    def __init__(self):
        super().__init__()
        self.score = nn.Linear(4, 1)
        self.out = nn.Linear(4, 2)

    def forward(self, x, mask):
        w = torch.softmax(self.score(x).squeeze(-1) + mask, dim=1)
        return self.out((w.unsqueeze(-1) * x).sum(1))


def test_an_additive_minus_inf_mask_in_the_input_is_not_a_finding(run_dir):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, 4, generator=g)
    y = (x[:, :4, 0].sum(1) > 0).long()
    mask = torch.zeros(32, 6)
    mask[:, 4:] = float("-inf")  # padding positions
    model = MaskedPool()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(15):
            loss = loss_fn(model(x, mask), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert len(lens.records.table("nonfinite")) > 0  # it was seen ...
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]  # ... and fine


def test_finite_checks_leave_the_training_bit_identical(run_dir):
    def trained(watched):
        torch.manual_seed(0)
        model = mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        x, y = classification_data()
        ctx = trainlens.watch(model, opt, run_dir=run_dir, quiet=True) if watched else None
        with ctx if ctx is not None else contextlib.nullcontext():
            for _ in range(5):
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(trained(False), trained(True), strict=True):
        assert torch.equal(a, b)


def test_after_a_nan_between_samples_the_alarm_steps_are_sampled_for_every_statistic(run_dir):
    # sample_every=1000: from step 160 nothing is sampled, except after the alarm
    model = nn.Sequential(nn.Linear(8, 16), LogOfZeroAt(113), nn.Linear(16, 3))
    lens = run(model, run_dir, steps=176, sample_every=1000)
    # the NaN loss of step 113 reaches the host at the read-back after step 149: the
    # next 20 steps get the full statistics (parameters, activations), not only the checks
    steps = set(lens.records.params["step"])
    assert set(range(150, 170)) <= steps
    assert not steps & set(range(170, 176))
    assert set(range(150, 170)) <= set(lens.records.activations["step"])


def test_an_evaluation_under_inference_mode_is_checked_and_stops_no_probe(run_dir):
    # `torch.inference_mode()` is how Lightning and many loops evaluate: its tensors keep
    # no version counter, which the finiteness check reads to skip a tensor checked twice
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(64, 4)
    y = x.sum(1, keepdim=True)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for step in range(8):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.eval()
            with torch.inference_mode():
                model(bad if step == 3 else x)
            model.train()
    assert "probes_stopped" not in lens.records.meta
    rows = lens.records.nonfinite
    assert set(rows["split"]) == {"val"} and set(rows["step"]) == {4}  # after step 3's step()
    assert ("input", "input 0") in set(zip(rows["kind"], rows["name"], strict=True))


# --- one update that replaced the weights, the NaN/Inf one step later ----------------------
def deep_classifier(run_dir, *, weight_std=None, lr=0.01):
    torch.manual_seed(0)
    x = torch.randn(256, 32)
    y = (x @ torch.randn(32, 4)).argmax(1)
    layers = []
    for i in range(8):
        layers += [nn.Linear(32 if i == 0 else 128, 128), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(128, 4))
    if weight_std is not None:  # the bug: std 1 instead of ~1/sqrt(fan_in)
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, weight_std)
                nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for i in range(0, 256, 32):
            loss = nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return lens


def nonfinite(lens):
    (f,) = [f for f in lens.findings if f.symptom == "non_finite"]
    return f


def test_a_deep_stack_initialised_with_std_1_is_exploding_gradient_not_a_layer(run_dir):
    lens = deep_classifier(run_dir, weight_std=1.0)
    f = nonfinite(lens)
    ids = [c.id for c in f.likely_causes]
    # the Linear whose output first held NaN is where it showed, not what caused it
    assert ids[0] == "exploding_gradient" and ids.index("numerical_instability") == 2, ids
    assert f.top.step < f.step  # the update came first, the NaN/Inf after it
    assert "the update replaced the weights" in f.top.evidence
    assert "the loss at initialisation was already" in f.top.evidence
    assert "1/sqrt(fan_in)" in f.first_check


def test_a_learning_rate_that_blows_the_weights_at_once_is_lr_too_high(run_dir):
    lens = deep_classifier(run_dir, lr=1e15)  # default init: a gradient norm below 1
    f = nonfinite(lens)
    assert f.likely_cause == "lr_too_high"
    assert "one optimizer step (lr 1.00e+15" in f.top.evidence
    assert "the loss at initialisation" not in f.top.evidence


def test_the_same_stack_with_its_default_init_and_lr_has_no_nan(run_dir):
    lens = deep_classifier(run_dir)
    assert not [f for f in lens.findings if f.symptom == "non_finite"]


# --- attention whose mask leaves a query no key ------------------------------------------
class TinyCausalLM(nn.Module):
    """One head of hand-written causal attention over 8 tokens; `inverted` builds the mask
    the wrong way round (`== 1` where `== 0` was meant): the last query sees no key."""

    def __init__(self, inverted: bool):
        super().__init__()
        self.inverted = inverted
        self.emb = nn.Embedding(10, 16)
        self.qkv = nn.Linear(16, 48)
        self.head = nn.Linear(16, 10)
        self.register_buffer("mask", torch.tril(torch.ones(8, 8)))

    def forward(self, idx):
        q, k, v = self.qkv(self.emb(idx)).split(16, dim=-1)
        att = (q @ k.transpose(-2, -1)) / 4.0
        hide = self.mask == 1 if self.inverted else self.mask == 0
        att = torch.softmax(att.masked_fill(hide, float("-inf")), dim=-1)
        return self.head(att @ v).reshape(-1, 10)


def _lm_batch(step):
    g = torch.Generator().manual_seed(step)
    idx = torch.randint(0, 10, (4, 8), generator=g)
    return idx, idx.roll(-1, dims=1).reshape(-1)


def test_a_causal_mask_the_wrong_way_round_is_named_not_guarded_with_an_eps(run_dir):
    """The last query row keeps no key: softmax over only -inf is NaN at step 0. The drill
    names the mask, the rows it empties and that it is inverted, and says to fix the mask,
    not to clamp a log."""
    run(TinyCausalLM(inverted=True), run_dir, steps=3, batch=_lm_batch)
    f = finding(run_dir)
    # the attention runs in the model's own forward: no submodule to name
    assert (f["likely_cause"], f["module"], f["step"]) == ("numerical_instability", None, 0)
    ev = f["likely_causes"][0]["evidence"]
    assert "the model's own forward (`model`) (TinyCausalLM) made NaN in its attention" in ev
    assert "in a sequence of 8 positions, 1 query row(s) had every key masked out" in ev
    assert "a causal mask the wrong way round" in ev
    assert "allows no key at all in 1 of the 8 query rows" in f["first_check"]
    assert "every query row keeps at least one key" in f["fix_attempt"]
    assert "clamp_min" not in f["fix_attempt"]
    meta = trainlens.load_run(run_dir).records.meta["attention_empty_rows"]
    assert list(meta.values()) == [
        {"rows": 1, "of": 8, "inverted_causal": True, "step": 0, "source": "softmax(q @ k^T)"}
    ]


def test_the_same_mask_the_right_way_round_leaves_every_row_a_key(run_dir):
    lens = run(TinyCausalLM(inverted=False), run_dir, steps=3, batch=_lm_batch)
    assert "attention_empty_rows" not in lens.records.meta
    assert not [f for f in lens.findings if f.symptom == "non_finite"]


class PaddedClassifier(nn.Module):
    """`nn.MultiheadAttention` over padded token sequences, averaged into two classes."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 2)

    def forward(self, tokens, key_padding_mask):
        h = self.emb(tokens)
        out, _ = self.attn(h, h, h, key_padding_mask=key_padding_mask)
        return self.head(out.mean(1))


@pytest.mark.parametrize("inverted", [True, False], ids=["inverted", "right"])
def test_a_key_padding_mask_true_at_the_real_tokens_hides_every_key_of_a_full_sequence(
    run_dir, inverted
):
    """`key_padding_mask` is True at the keys to ignore; passed the other way round, a
    sequence without padding has no key left and MultiheadAttention returns NaN."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 20, (16, 6), generator=g)
    lengths = torch.tensor([6] * 4 + [3] * 12)  # four sequences fill all six positions
    padding = torch.arange(6)[None] >= lengths[:, None]
    mask = ~padding if inverted else padding
    y = (tokens[:, 0] > 10).long()
    torch.manual_seed(0)
    model = PaddedClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(2):
            loss = nn.functional.cross_entropy(model(tokens, mask), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    if not inverted:
        assert "attention_empty_rows" not in lens.records.meta
        assert not [f for f in lens.findings if f.symptom == "non_finite"]
        return
    f = finding(run_dir)
    assert (f["likely_cause"], f["module"]) == ("numerical_instability", "attn")
    assert "6 query row(s) had every key masked out" in f["likely_causes"][0]["evidence"]
    assert "True marks a key to ignore" in f["first_check"]


def test_a_mask_whose_rows_cannot_be_read_costs_the_note_not_the_attention_summary(
    run_dir, monkeypatch
):
    """Reading the mask's empty rows is a nicety at a layer's first observation: if it
    fails, the layer is still summarised and no probe error is reported."""
    from trainlens._probes import _attention

    def unreadable(allowed):
        raise RuntimeError("mask not readable")

    monkeypatch.setattr(_attention, "empty_rows", unreadable)
    lens = run(TinyCausalLM(inverted=False), run_dir, steps=3, batch=_lm_batch)
    assert "attention_empty_rows" not in lens.records.meta
    assert len(lens.records.attention) > 0
    events = lens.records.events
    assert not (events["kind"] == "probe_error").any(), events.to_dict("records")


def _bce_without_minus():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from diagnosis import PROGRAMS, load_program

    return load_program(PROGRAMS / "logistic_regression_hand_written_bce_minus_sign_missing.py")


def test_a_binary_cross_entropy_without_its_minus_overflows_for_want_of_a_floor(run_dir):
    _bce_without_minus().main(run_dir)
    drill = trainlens.load_run(run_dir).drill
    (f,) = [f for f in drill["findings"] if f["symptom"] == "non_finite"]
    ids = [c["id"] for c in f["likely_causes"]]
    # the log(0) that overflowed is where the fall ended, not why it fell
    assert ids[0] == "loss_unbounded_below" and "numerical_instability" in ids[1:]
    assert "below zero at every step" in f["likely_causes"][0]["evidence"]
    assert "Put the minus back" in f["fix_attempt"] and "clamp" not in f["fix_attempt"]


def test_a_minus_left_out_at_a_large_lr_is_named_from_a_handful_of_finite_steps(run_dir):
    # at lr 1 the log-likelihood runs to log(0) within a few steps: too few for a trend,
    # but every one below zero and the last twice as far down as the first
    program = _bce_without_minus()
    program.LR = 1.0
    program.main(run_dir)
    records = trainlens.load_run(run_dir).records
    loss = records.train_loss()
    finite = loss[loss.abs() < float("inf")]
    assert len(finite) < 20 and finite.max() < 0
    (f,) = [
        f for f in trainlens.load_run(run_dir).drill["findings"] if f["symptom"] == "non_finite"
    ]
    assert f["likely_causes"][0]["id"] == "loss_unbounded_below"
