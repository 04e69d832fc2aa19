"""flat_loss: for every cause a real planted-bug training run where it is ranked first.

Each program is the bug as users write it (a forgotten `optimizer.step()`, a model rebuilt
after its optimizer, a softmax before `CrossEntropyLoss`, labels shuffled apart from the
inputs, ...), trained for a few dozen steps on a tiny model. The drill read back from disk
must name the cause first, the module to blame where there is one, and real numbers.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import jsonschema
import pytest
import torch
from torch import nn

import trainlens
from models import classification_data, fit_epochs, mlp, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from diagnosis import PROGRAMS, load_program


def loop(model, opt, data, run_dir, *, steps=60, batch=16, loss_fn=None, zero_grad=True,
         step=True):  # fmt: skip
    """The usual loop, with the two lines a planted bug may leave out."""
    x, y = data
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for s in range(steps):
            i = (s * batch) % len(x)
            loss = loss_fn(model(x[i : i + batch]), y[i : i + batch])
            if zero_grad:
                opt.zero_grad()
            loss.backward()
            if step:
                opt.step()
    return lens


def flat_finding(lens, run_dir):
    """The flat_loss finding as drill.json on disk says it."""
    drill = json.loads((run_dir / "drill.json").read_text())
    found = [f for f in drill["findings"] if f["symptom"] == "flat_loss"]
    assert len(found) == 1, [f.summary() for f in lens.findings]
    finding = found[0]
    assert finding["likely_cause"] == finding["likely_causes"][0]["id"]
    assert re.search(r"\d", finding["likely_causes"][0]["evidence"])
    assert not re.search(r"\{\w+\}", finding["first_check"] + finding["fix_attempt"])
    return finding


def ranked(finding):
    return [c["id"] for c in finding["likely_causes"]]


DATA = dict(n=256)


# --- one planted bug per cause ----------------------------------------------------------
def test_a_learning_rate_of_1e_7_is_lr_too_low_with_the_update_ratio(run_dir):
    lens = train(mlp(), classification_data(**DATA), steps=40, lr=1e-7,
                 optimizer=torch.optim.SGD, run_dir=run_dir)  # fmt: skip
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "lr_too_low"
    assert f["severity"] == "error" and lens.drill["status"] == "failed"
    assert "update/param ratio 1." in f["likely_causes"][0]["evidence"]
    assert "e-08" in f["likely_causes"][0]["evidence"]
    assert "1.00e-07" in f["first_check"]  # the lr the user set, to print and compare


def test_a_forgotten_optimizer_step_is_optimizer_not_stepping(run_dir):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    lens = loop(model, opt, classification_data(**DATA), run_dir, steps=40, step=False)
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "optimizer_not_stepping"
    assert "0 optimizer steps over 40 backward passes" in f["likely_causes"][0]["evidence"]


def test_a_learning_rate_of_zero_is_optimizer_not_stepping_with_the_lr(run_dir):
    lens = train(mlp(), classification_data(**DATA), steps=40, lr=0.0,
                 optimizer=torch.optim.SGD, run_dir=run_dir)  # fmt: skip
    f = flat_finding(lens, run_dir)
    assert ranked(f)[0] == "optimizer_not_stepping"
    assert "lr_too_low" not in ranked(f)  # nothing moved at all: not a small step
    assert re.search(r"never changed over \d+ sampled steps", f["likely_causes"][0]["evidence"])
    assert "lr is 0" in f["likely_causes"][0]["evidence"]


def test_a_model_rebuilt_after_its_optimizer_is_params_not_in_optimizer(run_dir):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model = mlp()  # the bug: a fresh model, the optimizer still holds the old parameters
    lens = loop(model, opt, classification_data(**DATA), run_dir)
    f = flat_finding(lens, run_dir)
    assert ranked(f) == ["params_not_in_optimizer"]  # not zero_grad_missing, not stepping
    ev = f["likely_causes"][0]["evidence"]
    assert "6 of 6 trainable parameters" in ev and "`0.weight`" in ev


def test_a_loop_without_zero_grad_is_zero_grad_missing(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.003)
    lens = loop(model, opt, classification_data(**DATA), run_dir, steps=40, zero_grad=False)
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "zero_grad_missing"
    ev = f["likely_causes"][0]["evidence"]
    assert re.search(r"on (\d+) of \1 sampled steps", ev), ev
    assert "1 backward pass(es) per step" in ev


class FrozenEncoder(nn.Module):
    """The bug: the encoder runs under no_grad; only an output temperature learns."""

    def __init__(self):
        super().__init__()
        self.encoder = mlp()
        self.log_temp = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        with torch.no_grad():
            logits = self.encoder(x)
        return logits / self.log_temp.exp()


def test_no_grad_inside_forward_is_no_gradient_flow_at_the_last_cut_layer(run_dir):
    model = FrozenEncoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    lens = loop(model, opt, classification_data(**DATA), run_dir)
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "no_gradient_flow"
    assert f["module"] == "encoder.4"  # where the backward pass stops
    assert "6 never received a gradient" in f["likely_causes"][0]["evidence"]


def test_a_detached_body_ranks_no_gradient_flow_above_vanishing_gradient(run_dir):
    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
            self.head = nn.Linear(32, 3, bias=False)
            with torch.no_grad():
                self.head.weight.mul_(1e-3)

        def forward(self, x):
            return self.head(self.body(x).detach())

    model = Detached()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    lens = loop(model, opt, classification_data(**DATA), run_dir)
    f = flat_finding(lens, run_dir)
    assert ranked(f)[0] == "no_gradient_flow"
    assert f["module"] == "body.2"


def test_relus_killed_by_a_negative_bias_are_dead_relu_at_that_activation(run_dir):
    model = mlp()
    with torch.no_grad():
        model[0].bias.fill_(-10.0)
    lens = train(model, classification_data(**DATA), steps=60, lr=1e-2, run_dir=run_dir)
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "dead_relu"
    assert f["module"] == "1"
    assert "100.0% of its elements" in f["likely_causes"][0]["evidence"]
    # the zero gradients upstream are a consequence, ranked below
    assert ranked(f).index("no_gradient_flow") > 0


def test_a_deep_sigmoid_stack_is_vanishing_gradient_at_the_input_layer(run_dir):
    layers = [nn.Linear(8, 16), nn.Sigmoid()]
    for _ in range(8):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(16, 3))
    lens = train(model, classification_data(**DATA), steps=60, lr=0.1,
                 optimizer=torch.optim.SGD, run_dir=run_dir)  # fmt: skip
    f = flat_finding(lens, run_dir)
    assert ranked(f)[0] == "vanishing_gradient"
    assert f["module"] == "0"
    ev = f["likely_causes"][0]["evidence"]
    assert "across 10 weight layers" in ev and "first/last ratio" in ev


def test_a_softmax_before_cross_entropy_is_softmax_before_loss(run_dir):
    model = nn.Sequential(mlp(), nn.Softmax(dim=1))
    lens = train(model, classification_data(**DATA), steps=60, lr=1e-3, run_dir=run_dir)
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "softmax_before_loss"
    assert f["module"] == "1"
    assert "each row sums to 1" in f["likely_causes"][0]["evidence"]


def test_log_softmax_before_cross_entropy_is_softmax_before_loss(run_dir):
    model = nn.Sequential(mlp(), nn.LogSoftmax(dim=1))
    # SGD at a small lr: LogSoftmax + CrossEntropy still learns, but slowly
    lens = train(model, classification_data(**DATA), steps=40, lr=1e-2,
                 optimizer=torch.optim.SGD, run_dir=run_dir)  # fmt: skip
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "softmax_before_loss"
    assert "log-probabilities" in f["likely_causes"][0]["evidence"]


def distill(run_dir, student_squash):
    """Knowledge distillation: a KL term against a teacher's softened outputs beside the
    cross-entropy on the labels (two losses a step, the student learns from both)."""
    torch.manual_seed(0)
    x = torch.randn(384, 20)
    teacher = nn.Linear(20, 6)
    y = teacher(x).argmax(1)
    student = mlp(20, 32, 6)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    with trainlens.watch(student, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(4):
            for i in range(0, len(x), 32):
                with torch.no_grad():
                    soft = torch.softmax(teacher(x[i : i + 32]) / 2.0, -1)
                logits = student(x[i : i + 32])
                kl = nn.functional.kl_div(
                    student_squash(logits / 2.0, -1), soft, reduction="batchmean"
                )
                loss = 4.0 * kl + nn.functional.cross_entropy(logits, y[i : i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return lens


def test_probabilities_into_kl_div_beside_a_cross_entropy_are_softmax_before_loss(run_dir):
    lens = distill(run_dir, torch.softmax)  # the bug: KL's input must be log_softmax
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "softmax_before_loss"
    evidence = f["likely_causes"][0]["evidence"]
    assert "the input of KLDivLoss is already probabilities" in evidence
    assert "expects log-probabilities" in evidence
    assert "F.log_softmax(x, dim=-1)" in f["fix_attempt"]
    assert not [g for g in lens.findings if g.symptom == "diverging"]


def test_log_softmax_into_kl_div_beside_a_cross_entropy_is_clean(run_dir):
    lens = distill(run_dir, torch.log_softmax)
    assert lens.findings == [], lens.drill["findings"]


def test_raw_0_to_255_pixels_are_unnormalized_input(run_dir):
    x, y = classification_data(**DATA)
    x = ((x + 3) * 42).clamp(0, 255).round()  # what a PIL image as a float tensor looks like
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)
    )
    lens = train(model, (x, y), steps=40, lr=1e-2, optimizer=torch.optim.SGD, run_dir=run_dir)
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "unnormalized_input"
    assert f["module"] == "0"
    assert "mean 128" in f["likely_causes"][0]["evidence"]


def test_labels_shuffled_apart_from_inputs_are_label_mismatch(run_dir):
    x, y = classification_data(n=512)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    lens = train(mlp(), (x, y), steps=40, lr=3e-3, run_dir=run_dir)
    f = flat_finding(lens, run_dir)
    assert ranked(f) == ["label_mismatch"]
    ev = f["likely_causes"][0]["evidence"]
    assert "class-prior entropy over 3 classes" in ev
    assert "gradients and updates look healthy" in ev
    assert "the targets carry nothing the inputs explain" in ev  # within 2% of the prior


def test_a_weak_but_real_signal_is_not_told_it_carries_nothing(run_dir):
    # a risk score's one informative feature (log-odds 0.5 per std, 10% positives): the
    # best possible loss is 3.4% under the class prior, and the model gets 3.3% under it.
    # Labels apart from their inputs give the same picture: the drill says both
    torch.manual_seed(0)
    x = torch.randn(8192, 16)
    y = torch.bernoulli(torch.sigmoid(0.5 * x[:, 0] + math.log(0.1 / 0.9)))
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _epoch in range(3):
            perm = torch.randperm(8192)
            for i in range(0, 8192, 128):
                j = perm[i : i + 128]
                out = model(x[j]).squeeze(1)
                loss = nn.functional.binary_cross_entropy_with_logits(out, y[j])
                opt.zero_grad()
                loss.backward()
                opt.step()
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "label_mismatch" and f["severity"] == "warning"
    ev = f["likely_causes"][0]["evidence"]
    assert "below" in ev and "the inputs explain little of the targets" in ev
    assert "weak signal" in ev and "carry nothing" not in ev
    assert "fit a simple baseline" in f["first_check"]


def test_label_mismatch_over_20_classes_uses_the_prior_of_all_batches_seen(run_dir):
    # a batch of 16 holds at most 16 of the 20 classes: its own prior would read too low
    x, y = classification_data(n=512, classes=20)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    lens = train(mlp(d_out=20), (x, y), steps=40, lr=3e-3, run_dir=run_dir)
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "label_mismatch"
    assert "over 20 classes" in f["likely_causes"][0]["evidence"]
    assert f["evidence"]["baseline"] > 2.5  # ln 20 = 3.0; one batch's prior is at most ln 16


def test_a_regression_target_from_the_wrong_column_is_label_mismatch(run_dir):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 4, generator=g)
    y = torch.randn(512, 1, generator=g) * 2  # a column unrelated to x
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
    lens = train(model, (x, y), steps=40, lr=1e-2, loss_fn=nn.MSELoss(), run_dir=run_dir)
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "label_mismatch"
    assert "target variance" in f["likely_causes"][0]["evidence"]


def test_the_regression_baseline_is_the_variance_of_every_target_seen(run_dir):
    # targets far from zero with features of different scales: the pooled variance of all
    # batches seen, not one batch's and not lost to float32 cancellation at the offset
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 10.0, 0.1])
    batches = [(torch.randn(16, 4, generator=g),
                torch.randn(16, 3, generator=g) * scale + 1e4 + k) for k in range(8)]  # fmt: skip
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with trainlens.watch(model, opt, run_dir=run_dir) as lens:
        for x, y in batches:
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    rows = lens.records.loss_inputs.sort_values("step")
    assert list(rows["step"]) == list(range(8))  # every step of the first 10 is sampled
    seen = torch.cat([y for _, y in batches]).double()
    expected = seen.var(0, unbiased=False).mean().item()
    assert rows["baseline"].iloc[-1] == pytest.approx(expected, rel=1e-4)
    first = batches[0][1].double().var(0, unbiased=False).mean().item()
    assert rows["baseline"].iloc[0] == pytest.approx(first, rel=1e-4)


def _house_prices(run_dir, *, standardise):
    """Tabular regression on prices around 3e5, the way a first Kaggle notebook feeds
    them: raw, or standardised with the training set's mean and std."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 8, generator=g)
    y = (x @ torch.randn(8, 1, generator=g)) * 2e4 + 3e5
    if standardise:
        y = (y - y.mean()) / y.std()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1))
    return _fit_mse(model, x, y, run_dir, epochs=10)


def _fit_mse(model, x, y, run_dir, *, epochs):
    """Adam on `F.mse_loss`, batches of 64 in order, under `watch`."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit_epochs(model, opt, (x, y), run_dir, epochs=epochs, batch=64, loss="mse_loss")


def test_raw_regression_targets_of_3e5_are_unnormalized_target(run_dir):
    lens = _house_prices(run_dir, standardise=False)
    f = flat_finding(lens, run_dir)
    assert (f["severity"], f["likely_cause"]) == ("error", "unnormalized_target")
    ev = f["likely_causes"][0]["evidence"]
    assert "targets are about 3.05e+05 in size" in ev
    assert "(y - y_mean) / y_std" in f["fix_attempt"]
    rms = lens.records.loss_inputs["target_rms"]
    assert rms.iloc[-1] == pytest.approx(3.05e5, rel=0.01)


def test_targets_holding_nan_have_no_scale_rather_than_scale_zero(run_dir):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)
    y[5] = float("nan")  # one broken row in the first batch
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for i in range(0, 64, 16):
            loss = nn.functional.mse_loss(model(x[i : i + 16]), y[i : i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
    rms = lens.records.loss_inputs["target_rms"]
    assert rms.isna().all(), rms.tolist()  # pooled with a NaN: unknown, never 0
    assert not [f for f in lens.findings if f.likely_cause == "unnormalized_target"]


def test_the_same_targets_standardised_train_and_stay_clean(run_dir):
    lens = _house_prices(run_dir, standardise=True)
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]
    assert lens.records.loss_inputs["target_rms"].iloc[-1] == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize(
    ("case", "said", "fix"),
    [
        ("no_grad", "ran with gradients switched off", "`torch.no_grad()` around validation only"),
        # the forward alone under no_grad, the loss outside it: filed under "train"
        (
            "no_grad_forward",
            "the model's forward that made it ran with gradients switched off",
            "`torch.no_grad()` around validation only",
        ),
        # the forward with gradients, the loss alone under no_grad: filed under "val"
        ("no_grad_loss", "the loss itself (trainlens filed it under", "validation only"),
        ("frozen", "no parameter of the model has requires_grad=True", "requires_grad_(True)"),
        ("rebuilt", "cut from the graph", "use `.item()` just for logging"),
        # the loss on the predicted class indices: argmax has no gradient
        ("argmax", "a step that has no gradient (`argmax`", "keep `argmax` for accuracy"),
    ],
)
def test_a_backward_with_no_graph_is_no_gradient_flow_with_how_it_was_cut(case, said, fix, run_dir):
    x, y = classification_data(n=64)
    model = mlp()
    if case == "frozen":
        model.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="does not require grad"):
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
            for i in range(0, 64, 16):
                with torch.set_grad_enabled(case != "no_grad"):
                    if case == "no_grad_forward":
                        with torch.no_grad():
                            out = model(x[i : i + 16])
                    else:
                        out = model(x[i : i + 16])
                    with torch.set_grad_enabled(case != "no_grad_loss"):
                        loss = nn.functional.cross_entropy(out, y[i : i + 16])
                    if case == "argmax":
                        loss = nn.functional.mse_loss(out.argmax(1).float(), y[i : i + 16].float())
                if case == "rebuilt":  # the loss rebuilt from its value: no graph left
                    loss = torch.tensor(loss.item(), requires_grad=False)
                opt.zero_grad()
                loss.backward()
                opt.step()
    drill = json.loads((run_dir / "drill.json").read_text())
    f = next(f for f in drill["findings"] if f["symptom"] == "flat_loss")
    assert (f["severity"], f["likely_cause"], f["step"]) == ("error", "no_gradient_flow", 0)
    assert said in f["likely_causes"][0]["evidence"]
    assert fix in f["fix_attempt"]


# --- when flat_loss stays silent --------------------------------------------------------
def test_a_run_too_short_for_a_trend_is_not_judged(run_dir):
    lens = train(mlp(), classification_data(**DATA), steps=12, lr=1e-7,
                 optimizer=torch.optim.SGD, run_dir=run_dir)  # fmt: skip
    assert [f for f in lens.findings if f.symptom == "flat_loss"] == []


def test_a_non_finite_loss_is_left_to_the_non_finite_rule(run_dir):
    x, y = classification_data(**DATA)
    x[100:] = float("nan")  # a broken batch late in the run
    lens = train(mlp(), (x, y), steps=60, lr=1e-7, optimizer=torch.optim.SGD, run_dir=run_dir)
    assert [f for f in lens.findings if f.symptom == "flat_loss"] == []


def test_a_crash_is_left_to_the_crash_rules(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-7)
    x, y = classification_data(**DATA)
    with pytest.raises(RuntimeError, match="boom"):
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
            for _ in range(60):
                loss = nn.functional.cross_entropy(model(x[:16]), y[:16])
                lens.log_loss(loss)
                opt.zero_grad()
                loss.backward()
                opt.step()
            raise RuntimeError("boom")
    assert [f for f in lens.findings if f.symptom == "flat_loss"] == []


def test_accumulating_gradients_over_micro_batches_is_not_zero_grad_missing(run_dir):
    # a flat run (tiny lr) with accumulation: stale-gradient evidence must not appear
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-7)
    x, y = classification_data(**DATA)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for s in range(128):
            i = (s * 8) % len(x)
            loss = nn.functional.cross_entropy(model(x[i : i + 8]), y[i : i + 8])
            lens.log_loss(loss)
            (loss / 4).backward()
            if s % 4 == 3:
                opt.step()
                opt.zero_grad()
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "lr_too_low"
    assert "zero_grad_missing" not in ranked(f)


def test_the_flat_loss_example_names_the_softmax_module(run_dir):
    from trainlens._demo import load_example

    lens = load_example("flat_loss.py").main(run_dir=run_dir)
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "softmax_before_loss" and f["module"] == "3"
    md = (run_dir / "drill.md").read_text()
    assert "Remove the final `Softmax` from the model" in md


# --- root causes first, fallbacks honest (issue 18 §3 §4): the program collection --------
def run_program(name, run_dir):
    """Run `tests/programs/<name>.py` as the benchmark does; its drill.json, validated."""
    program = load_program(PROGRAMS / f"{name}.py")
    program.main(run_dir)
    drill = json.loads((run_dir / "drill.json").read_text())
    schema = json.loads((Path(trainlens.__file__).parent / "drill.schema.json").read_text())
    jsonschema.validate(drill, schema)
    return program, drill


def test_relus_that_died_after_the_gradients_piled_up_rank_below_zero_grad_missing(run_dir):
    program, drill = run_program("mlp_zero_grad_missing_relus_die", run_dir)
    f = next(f for f in drill["findings"] if f["symptom"] == "flat_loss")
    assert f["likely_cause"] == program.EXPECT["cause"] == "zero_grad_missing"
    dead = next(c for c in f["likely_causes"] if c["id"] == "dead_relu")
    assert ranked(f).index("dead_relu") > 0
    assert "likely a consequence of zero_grad_missing" in dead["evidence"]
    steps = [int(s) for s in re.findall(r"from step (\d+)", dead["evidence"])]
    assert steps[0] < steps[1]  # the stale gradients showed first, the dead ReLUs later
    assert "zero_grad()" in f["first_check"]  # what to do follows the root


def test_a_genuine_dead_relu_run_still_ranks_dead_relu_first(run_dir):
    program, drill = run_program("mlp_relu_negative_bias_init", run_dir)
    f = next(f for f in drill["findings"] if f["symptom"] == "flat_loss")
    assert f["likely_cause"] == "dead_relu" and f["module"] == program.EXPECT["module"]
    assert "zero_grad_missing" not in ranked(f)
    assert "consequence" not in f["likely_causes"][0]["evidence"]


def test_a_frozen_backbone_that_is_still_a_fresh_init_is_no_gradient_flow(run_dir):
    _, drill = run_program("finetune_frozen_fresh_backbone", run_dir)
    f = next(f for f in drill["findings"] if f["symptom"] == "flat_loss")
    assert f["likely_cause"] == "no_gradient_flow" and f["module"] == "backbone"
    ev = f["likely_causes"][0]["evidence"]
    assert "requires_grad=False" in ev and "99% of the model" in ev
    assert "still look like a fresh kaiming" in ev and "never meant to be frozen" in ev
    # the fallback stays below the specific cause, saying so
    assert ranked(f).index("label_mismatch") > 0
    assert f["severity"] == "error"


def test_a_frozen_pretrained_backbone_under_a_head_that_trains_well_stays_clean(run_dir):
    _, drill = run_program("finetune_frozen_pretrained_backbone", run_dir)
    assert drill["status"] == "healthy" and drill["findings"] == []


def test_the_healthy_twin_of_the_zero_grad_program_stays_clean(run_dir):
    _, drill = run_program("mlp_sgd_momentum_healthy", run_dir)
    assert drill["status"] == "healthy", [f["likely_cause"] for f in drill["findings"]]


def test_a_flat_loss_with_no_specific_evidence_says_unknown_with_the_generic_checks(run_dir):
    _, drill = run_program("mlp_random_labels_unused_layer", run_dir)
    f = next(f for f in drill["findings"] if f["symptom"] == "flat_loss")
    assert ranked(f) == ["unknown"] and f["severity"] == "warning"
    cause = f["likely_causes"][0]
    assert cause["confidence"] < 0.5
    assert "no specific cause showed" in cause["evidence"]
    assert "ruled out: optimizer_not_stepping" in cause["evidence"]
    assert "dead_relu" in f["evidence"]["ruled_out"]
    for generic in ("learning rate", "labels", "normalisation", "loss function"):
        assert generic in f["first_check"]


def test_label_mismatch_is_a_lower_confidence_conclusion_listing_what_it_ruled_out(run_dir):
    x, y = classification_data(n=512)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    lens = train(mlp(), (x, y), steps=40, lr=3e-3, run_dir=run_dir)
    f = flat_finding(lens, run_dir)
    cause = f["likely_causes"][0]
    assert cause["id"] == "label_mismatch" and cause["confidence"] < 0.7
    assert "by elimination, after ruling out: optimizer_not_stepping" in cause["evidence"]
    assert "softmax_before_loss" in f["evidence"]["ruled_out"]


def test_a_loss_that_jumped_after_the_first_step_then_sat_flat_is_lr_too_high(run_dir):
    # Adam at lr 1.0 on a transformer encoder: the first update replaces the weights, the
    # loss jumps 25x, falls back to the constant prediction and sits there; the median of
    # the jumped losses must not read as a loss that fell
    from attention_models import EncoderClassifier, train_encoder

    torch.manual_seed(0)
    lens = train_encoder(EncoderClassifier(), run_dir, steps=120, lr=1.0)
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "lr_too_high"
    evidence = f["likely_causes"][0]["evidence"]
    assert evidence.startswith("at step 0 one update moved the weights by")
    assert "and the loss jumped from" in evidence
    assert "Divide the learning rate by 100" in f["fix_attempt"]


class Lion(torch.optim.Optimizer):
    """A hand-written optimizer subclass (sign of the momentum, Chen et al. 2023)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99)):
        super().__init__(params, {"lr": lr, "betas": betas})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                p.add_((m * b1 + p.grad * (1 - b1)).sign_(), alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


def test_a_slow_learner_already_below_the_constant_prediction_is_no_label_mismatch(run_dir):
    # the loss falls 1.39 -> 1.24, 10% under ln(4) and still falling: the inputs explain
    # part of the targets, so "the targets carry nothing" would be wrong
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x @ torch.randn(20, 4)).argmax(1)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = Lion(model.parameters(), lr=3e-4)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(5):
            for i in range(0, 512, 32):
                loss = nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
    losses = lens.records.train_loss()
    assert losses.iloc[-16:].median() < 0.95 * math.log(4)
    assert not [f for f in lens.findings if f.likely_cause in ("label_mismatch", "unknown")]


def test_gentle_fine_tuning_of_a_model_that_already_knows_the_task_is_no_lr_too_low(run_dir):
    # AdamW at 1e-5 moves the weights under 1% over the run, and the loss barely moves:
    # but it sits far below the constant prediction (the model was trained first), so the
    # small steps are a choice, not a bug
    torch.manual_seed(0)
    x = torch.randn(896, 20)
    y = (x @ torch.randn(20, 4)).argmax(1)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    train(model, (x, y), steps=84, batch=32, lr=1e-2, watch=False)  # "pretrained"
    lens = train(
        model, (x, y), steps=140, batch=32, lr=1e-5, optimizer=torch.optim.AdamW,
        run_dir=run_dir,
    )  # fmt: skip
    assert lens.records.train_loss().median() < 0.5 * math.log(4)
    assert lens.findings == [], lens.drill["findings"]


# --- gradient_clipped: clipping far below the gradient's own size ------------------------
def _clipped(run_dir, clip, opt_cls=torch.optim.SGD, lr=0.1, epochs=8):
    """A small classifier whose loop clips before each step: `clip(model)`."""
    x, y = classification_data(n=256)
    torch.manual_seed(0)
    model = mlp()
    opt = opt_cls(model.parameters(), lr=lr)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(epochs):
            for i in range(0, 256, 32):
                loss = nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
                opt.zero_grad()
                loss.backward()
                clip(model)
                opt.step()
    return lens, model


def test_clip_grad_norm_far_below_the_gradient_is_gradient_clipped(run_dir):
    from torch.nn.utils import clip_grad_norm_  # bound before the block: still seen

    lens, _ = _clipped(run_dir, lambda m: clip_grad_norm_(m.parameters(), 1e-4))
    info = lens.records.meta["grad_clipping"]
    assert info["norm_calls"] == 64 and len(info["norm"]) == 16  # the first sampled steps
    assert all(d["max_norm"] == 1e-4 and d["norm_before"] > 1e-2 for d in info["norm"])
    f = flat_finding(lens, run_dir)
    assert (f["severity"], f["likely_cause"]) == ("error", "gradient_clipped")
    top = f["likely_causes"][0]
    assert (
        "`clip_grad_norm_` with max_norm 1.00e-04 cut the gradient on 16 of 16" in top["evidence"]
    )
    assert "max_norm=1.0" in f["fix_attempt"]
    assert all(c["confidence"] <= 0.3 for c in f["likely_causes"][1:])  # not the lr
    from torch.nn.utils import clip_grad

    assert clip_grad._clip_grads_with_norm_.__module__ == "torch.nn.utils.clip_grad"


def test_clip_grad_value_over_a_generator_is_seen_and_trains_as_without_watch(run_dir, tmp_path):
    """`clip_grad_value_(model.parameters(), v)`: the generator is read once and handed on,
    so the run trains bit for bit as the same loop without watch."""

    def clip(m):
        nn.utils.clip_grad_value_(m.parameters(), 1e-5)

    lens, watched = _clipped(run_dir, clip)
    x, y = classification_data(n=256)
    torch.manual_seed(0)
    plain = mlp()
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    for _ in range(8):
        for i in range(0, 256, 32):
            loss = nn.functional.cross_entropy(plain(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            clip(plain)
            opt.step()
    for a, b in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(a, b)
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "gradient_clipped"
    assert "`clip_grad_value_` at 1.00e-05 clipped" in f["likely_causes"][0]["evidence"]
    assert "p.grad.abs().max()" in f["first_check"]
    assert nn.utils.clip_grad_value_.__module__ == "torch.nn.utils.clip_grad"


def test_clipping_at_one_and_adam_clipped_hard_are_no_clipping_cause(run_dir, tmp_path):
    """max_norm 1.0 cuts only spikes; and Adam divides any cut back out of its steps."""
    lens, _ = _clipped(run_dir, lambda m: nn.utils.clip_grad_norm_(m.parameters(), 1.0))
    assert lens.records.meta["grad_clipping"]["norm_calls"] == 64
    causes = {c.id for f in lens.findings for c in f.likely_causes}
    assert "gradient_clipped" not in causes
    lens, _ = _clipped(
        tmp_path / "adam",
        lambda m: nn.utils.clip_grad_norm_(m.parameters(), 1e-4),
        opt_cls=torch.optim.Adam,
        lr=1e-2,
    )
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]


# --- a layer whose output is all zeros cuts the flow there -------------------------------
def _dropout_net(run_dir, p, dead=False):
    x, y = classification_data(n=256)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(p=p), nn.Linear(32, 3))
    if dead:
        with torch.no_grad():
            model[0].bias.fill_(-100.0)  # every ReLU unit dead before the dropout
    return fit_epochs(model, torch.optim.Adam(model.parameters(), lr=1e-3), (x, y), run_dir,
                      epochs=8)  # fmt: skip


def test_a_dropout_of_p_1_is_where_the_gradient_stops_with_p_explained(run_dir):
    """`nn.Dropout(p=1.0)` (a keep rate written as the drop rate) outputs only zeros: the
    weights before it get no gradient and the layer after it no input. The drill names the
    dropout, not the Linear after it, and says what p means; not `.detach()`."""
    lens = _dropout_net(run_dir, 1.0)
    f = flat_finding(lens, run_dir)
    assert (f["likely_cause"], f["module"]) == ("no_gradient_flow", "2")
    assert "`2` (Dropout) outputs exactly zero on" in f["likely_causes"][0]["evidence"]
    assert "`p=1.0` drops every element" in f["fix_attempt"]
    assert ".detach()" not in f["first_check"]


def test_a_dropout_after_dead_relus_leaves_the_blame_on_the_relus(run_dir):
    """Zeros that start at a dead ReLU also come out of the dropout after it: the ReLU is
    where they start, and the dropout's p is not blamed."""
    lens = _dropout_net(run_dir, 0.1, dead=True)
    f = flat_finding(lens, run_dir)
    assert f["likely_cause"] == "dead_relu"
    assert all("drops every element" not in c["evidence"] for c in f["likely_causes"])
    assert "drops every element" not in f["fix_attempt"]


# --- an output that cannot reach the targets ---------------------------------------------
class _FunctionalRelu(nn.Module):
    """`torch.relu` applied to the output at the end of forward: no layer says so."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x):
        return torch.relu(self.body(x))


def _bounded_regression(run_dir, head, targets="standardised", epochs=20):
    """A small MLP regressing a linear function of its input, `head` after its output."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    y = (y - y.mean()) / y.std() if targets == "standardised" else y.abs()
    torch.manual_seed(0)
    if head == "functional":
        model = _FunctionalRelu()
    else:
        layers = [nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1)]
        model = nn.Sequential(*layers, *([head] if head is not None else []))
    return _fit_mse(model, x, y, run_dir, epochs=epochs)


def test_a_relu_after_the_output_layer_stops_the_loss_at_the_negative_targets_cost(run_dir):
    """About half of standardised targets are negative; a final ReLU predicts 0 for them.
    The loss falls, then sits on what those targets cost: the drill names the ReLU, the
    share of targets out of reach and that floor, and says to remove it."""
    lens = _bounded_regression(run_dir, nn.ReLU())
    f = flat_finding(lens, run_dir)
    assert (f["severity"], f["likely_cause"], f["module"]) == ("error", "bounded_output", "3")
    ev = f["likely_causes"][0]["evidence"]
    assert "`3` (ReLU), only outputs values in [0, +inf)" in ev
    assert re.search(r"(4\d|5\d)% of the regression targets lie below 0, the lowest output", ev)
    assert "Remove the final ReLU" in f["fix_attempt"]
    li = lens.records.loss_inputs
    late = li[li["step"] >= 100]
    # what the probe measured: the outputs never below 0, the targets' cost below them a
    # floor the loss at the same steps cannot be under
    assert (late["min"] == 0).all()
    loss = lens.records.train_loss().reindex(late["step"])
    assert (late["target_below_mse"].to_numpy() <= loss.to_numpy() + 1e-6).all()
    assert late["target_below_mse"].median() > 0.2


def test_a_tanh_head_on_standardised_targets_names_the_range_it_keeps_to(run_dir):
    lens = _bounded_regression(run_dir, nn.Tanh())
    f = flat_finding(lens, run_dir)
    assert (f["likely_cause"], f["module"]) == ("bounded_output", "3")
    assert "only outputs values in [-1, 1]" in f["likely_causes"][0]["evidence"]
    assert "scale the targets into [-1, 1]" in f["fix_attempt"]


def test_a_relu_applied_in_forward_is_seen_from_the_output_it_pins_at_0(run_dir):
    lens = _bounded_regression(run_dir, "functional")
    f = flat_finding(lens, run_dir)
    assert (f["likely_cause"], f["module"]) == ("bounded_output", None)
    assert "never went below 0 on the last sampled steps" in f["likely_causes"][0]["evidence"]
    assert "`torch.relu`" in f["fix_attempt"]


@pytest.mark.parametrize("head", [None, nn.ReLU()], ids=["linear", "relu_on_nonnegative"])
def test_an_output_that_reaches_its_targets_stays_clean(run_dir, head):
    """A plain Linear head on standardised targets, and a final ReLU on targets that are
    never negative (a magnitude): nothing lies out of the output's reach."""
    targets = "standardised" if head is None else "nonnegative"
    lens = _bounded_regression(run_dir, head, targets=targets)
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]
    if head is not None:  # the ReLU's output is never pressed against its 0
        li = lens.records.loss_inputs
        assert (li[li["step"] >= 100]["min"] > 0.5).all()


# --- units that start equal ----------------------------------------------------------------
@pytest.mark.parametrize("init", ["constant", "default"])
def test_a_constant_weight_init_is_units_that_never_part(run_dir, init):
    """Every hidden unit starts with the same weights, gets the same gradient and stays
    the same: the drill names the weight, shows how to print its rows, and says to
    initialise at random, not that the targets carry nothing (the loss sits at the prior)."""
    x, y = classification_data(n=512)
    torch.manual_seed(0)
    model = mlp()
    if init == "constant":
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                nn.init.constant_(layer.weight, 0.05)
                nn.init.zeros_(layer.bias)
    lens = loop(model, torch.optim.SGD(model.parameters(), lr=0.1), (x, y), run_dir,
                steps=120, batch=32)  # fmt: skip
    same = lens.records.meta["identical_rows"]
    if init == "default":
        assert same == {}
        assert "symmetric_init" not in {c.id for f in lens.findings for c in f.likely_causes}
        return
    first = next(iter(same))
    assert same[first] == model[0].weight.shape[0]
    f = flat_finding(lens, run_dir)
    assert ranked(f) == ["symmetric_init"], ranked(f)
    assert f"`{first}`" in f["likely_causes"][0]["evidence"]
    assert f"Print `model[{first.split('.')[0]}].weight[:3]`" in f["first_check"]
    assert "kaiming_uniform_" in f["fix_attempt"]


# --- a recurrent layer read at its first step ------------------------------------------------
class _SequenceClassifier(nn.Module):
    """An LSTM over 12 steps whose label depends on the last three; `step` is the output
    step the head reads (0: the bug, -1: the last step)."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step
        self.rnn = nn.LSTM(8, 32, batch_first=True)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, self.step])


@pytest.mark.parametrize("step", [0, -1], ids=["first_step", "last_step"])
def test_an_rnn_read_at_its_first_step_is_named_by_its_recurrent_weights(run_dir, step):
    """At the first step the previous hidden state is zero, so the hidden-to-hidden weights
    get exactly zero gradient while the input weights learn: the drill says the model reads
    the first step (`out[:, 0]`) and to read the last one, not to look for `.detach()`."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 12, 8, generator=g)
    y = (x[:, -3:, 0].sum(1) > 0).long()
    torch.manual_seed(0)
    model = _SequenceClassifier(step)
    lens = loop(model, torch.optim.Adam(model.parameters(), lr=3e-3), (x, y), run_dir,
                steps=96, batch=32)  # fmt: skip
    if step == -1:
        assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]
        return
    f = flat_finding(lens, run_dir)
    assert (f["likely_cause"], f["module"]) == ("no_gradient_flow", "rnn")
    assert (
        "only the hidden-to-hidden weights of `rnn` (`rnn.weight_hh_l0`)"
        in (f["likely_causes"][0]["evidence"])
    )
    assert "`out[:, 0]` is the first step" in f["first_check"]
    assert "`out[:, -1]`" in f["fix_attempt"] and ".detach()" not in f["fix_attempt"]
