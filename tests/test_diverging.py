"""diverging: a loss that rises or swings is an error with the step size or the gradients
named as its cause, ranked by which evidence came first."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import trainlens
from models import classification_data, fit_epochs, mlp, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from diagnosis import PROGRAMS, load_program


def finding(run_dir, symptom="diverging"):
    """The finding as a user reads it back from drill.json."""
    drill = trainlens.load_run(run_dir).drill
    found = [f for f in drill["findings"] if f["symptom"] == symptom]
    assert len(found) == 1, drill["findings"]
    return found[0]


def test_lr_10_on_an_mlp_is_a_diverging_error_blaming_the_learning_rate(run_dir):
    lens = train(mlp(), classification_data(n=128), steps=60, lr=10.0, run_dir=run_dir)
    f = finding(run_dir)
    assert f["severity"] == "error" and lens.drill["status"] == "failed"
    assert f["likely_cause"] == "lr_too_high"
    top = f["likely_causes"][0]
    assert "update/param ratio" in top["evidence"] and "lr 10" in top["evidence"]
    ratio = f["evidence"]["early_update_ratio"]
    assert ratio > 1e-1, ratio  # Adam moves every weight by ~lr: ratios near 1
    assert "Divide the learning rate by 10 (now 10)" in f["fix_attempt"]
    assert "non_finite" not in {x["symptom"] for x in lens.drill["findings"]}


def quadratic_edge_of_stability(run_dir, steps=40, lr=0.08):
    """Linear regression started next to its solution with an lr just past 2/curvature:
    the error, and with it the gradient, grows ~1.5x per step from a tiny start."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g) * 3
    w = torch.randn(8, 1, generator=g)
    y = x @ w + 0.5
    model = nn.Linear(8, 1)
    with torch.no_grad():
        model.weight.copy_(w.T + 0.01 * torch.randn(1, 8, generator=g))
        model.bias.fill_(0.5)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.MSELoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(steps):
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return lens


def test_gradient_norm_growing_by_orders_is_an_exploding_gradient_first(run_dir):
    lens = quadratic_edge_of_stability(run_dir)
    f = finding(run_dir)
    assert f["severity"] == "error"
    assert [c["id"] for c in f["likely_causes"]] == ["exploding_gradient", "lr_too_high"]
    assert f["evidence"]["grad_growth_orders"] > 4
    assert "orders of magnitude" in f["likely_causes"][0]["evidence"]
    assert f["evidence"]["early_update_ratio"] < 3e-2  # moderate steps before it blew up
    assert "clip_grad_norm_" in f["fix_attempt"]
    assert lens.findings[0].module is None or lens.findings[0].module == ""


def test_same_regression_with_a_stable_lr_stays_silent(run_dir):
    lens = quadratic_edge_of_stability(run_dir, lr=0.06)
    assert lens.drill["findings"] == []


def test_an_lr_raised_mid_run_is_a_rebound_warning_blaming_the_learning_rate(run_dir):
    """A schedule bug: the lr jumps 100x at step 40, after the loss had fallen."""
    x, y = classification_data(n=128)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for step in range(80):
            if step == 40:
                opt.param_groups[0]["lr"] = 5.0
            i = (step * 16) % 128
            loss = loss_fn(model(x[i : i + 16]), y[i : i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
    f = finding(run_dir)
    assert f["likely_cause"] == "lr_too_high", f["likely_causes"]
    assert f["step"] >= 40
    assert "lr 5" in f["likely_causes"][0]["evidence"]
    # 100x the lr the optimizer was built with: the code that raised it is the fix
    assert (
        "The lr was 5 when the loss rose, 100x the 0.05 the optimizer was built with"
        in (f["fix_attempt"])
    )
    assert 'the code that sets `param_group["lr"]` raised it' in f["fix_attempt"]
    assert lens.findings[0].symptom == "diverging"


def test_a_warm_up_whose_multiplier_keeps_growing_names_the_schedule_not_a_smaller_lr(
    run_dir,
):
    """`LambdaLR(opt, lambda s: s / warmup if s < warmup else s)`: after the warm-up the
    multiplier is the step count, so the lr climbs past 100x the one Adam was built with
    and the loss blows up. Dividing the built lr by 10 would only delay it."""
    x, y = classification_data(n=1024, d_in=20, classes=4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / 100 if s < 100 else s)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
        for step in range(256):
            i = (step * 32) % 1024
            loss = nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    f = finding(run_dir)
    assert f["likely_cause"] == "lr_too_high", f["likely_causes"]
    assert "the 0.001 the optimizer was built with: LambdaLR raised it" in f["fix_attempt"]
    assert "Divide the learning rate by 10" not in f["fix_attempt"]


# --- losses that go below zero: measured from their lowest value, not from zero ------------
def nll_on_probabilities(run_dir):
    """NLLLoss fed softmax outputs: the loss lies in [-1, 0] and falls (towards -1) while
    the model learns; 1.5x a negative start is below it, so every value looked "above"."""
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x @ torch.randn(20, 5)).argmax(1)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5), nn.Softmax(dim=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(10):
            for i in range(0, 512, 32):
                loss = nn.functional.nll_loss(model(x[i : i + 32]), y[i : i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return lens


def test_a_negative_loss_that_keeps_falling_is_not_diverging(run_dir):
    lens = nll_on_probabilities(run_dir)
    losses = lens.records.train_loss()
    assert losses.max() < 0 and losses.iloc[-20:].median() < losses.iloc[0]  # below 0, falls
    assert not [f for f in lens.findings if f.symptom == "diverging"], lens.drill["findings"]
    (f,) = lens.findings  # what is wrong is the softmax, found from the first loss
    assert (f.symptom, f.likely_cause, f.module) == ("flat_loss", "softmax_before_loss", "3")


def gaussian_nll(run_dir, lr, raised_to=None):
    """A heteroscedastic regression (mean and variance heads, GaussianNLLLoss): its loss
    goes below zero once the predicted variance is small, as it should. With `raised_to`,
    the lr is set to it after 10 of the 20 epochs."""
    torch.manual_seed(0)
    x = torch.rand(1024, 1) * 4 - 2
    y = torch.sin(2 * x) + 0.05 * torch.randn_like(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
            self.mu, self.log_var = nn.Linear(64, 1), nn.Linear(64, 1)

        def forward(self, x):
            h = self.body(x)
            return self.mu(h), self.log_var(h).exp()

    model, criterion = Net(), nn.GaussianNLLLoss()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for epoch in range(20):
            if epoch == 10 and raised_to is not None:
                for group in opt.param_groups:
                    group["lr"] = raised_to
            perm = torch.randperm(1024)
            for i in range(0, 1024, 64):
                mu, var = model(x[perm[i : i + 64]])
                loss = criterion(mu, y[perm[i : i + 64]], var)
                opt.zero_grad()
                loss.backward()
                opt.step()
    return lens


def test_a_gaussian_likelihood_below_zero_is_healthy_at_a_good_lr(run_dir):
    lens = gaussian_nll(run_dir, 3e-3)
    assert lens.records.train_loss().min() < 0
    assert lens.findings == [], lens.drill["findings"]


def test_a_loss_below_zero_that_swings_up_is_still_diverging(run_dir):
    # the loss reaches about -2.3 at Adam's 0.01, then swings far above its start at 0.08.
    # How it swings (a rise, a rebound, swings) and whether the gradients or the lr come
    # first vary with the last bits of the floats (8 seeds: the lr first in 7, second in 1)
    lens = gaussian_nll(run_dir, 0.01, raised_to=0.08)
    f = finding(run_dir)
    assert "lr_too_high" in [c["id"] for c in f["likely_causes"][:2]]
    assert lens.records.train_loss().min() < -1
    # measured from the lowest value and told in the loss's own units, below zero
    assert f["evidence"]["loss_best"] < -1


def test_a_surrogate_loss_whose_first_value_was_its_lowest_settling_at_zero_is_not_diverging(
    run_dir,
):
    """REINFORCE's surrogate starts at -0.24 (its lowest), swings, and settles at 0 as the
    policy commits: counted from that floor every later value is a rise of any ratio, but
    none clears the loss's own early scatter. Not diverging."""
    program = load_program(PROGRAMS / "rl_bandit_policy_gradient_healthy.py")
    program.main(run_dir)
    lens = trainlens.load_run(run_dir)
    losses = lens.records.train_loss()
    assert losses.iloc[0] == losses.min() < 0  # the floor is the first value
    assert abs(losses.iloc[-30:].median()) < 0.01  # settled at zero
    assert lens.drill["status"] == "healthy", lens.drill["findings"]


def test_accumulating_an_undivided_loss_over_16_passes_adds_the_division_to_the_fix(run_dir):
    """Gradient accumulation over 16 micro-batches without `loss / 16`: every step is 16x
    what the lr says. The lr is too high in effect, and the fix says where the 16x comes
    from."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 32, generator=g)
    y = (x @ torch.randn(32, 10, generator=g)).argmax(1)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for it in range(40):
            for k in range(16):
                i = ((it * 16 + k) * 16) % 4080
                nn.functional.cross_entropy(model(x[i : i + 16]), y[i : i + 16]).backward()
            opt.step()
            opt.zero_grad()
    (f,) = [f for f in lens.findings if f.symptom == "diverging"]
    assert f.likely_cause == "lr_too_high"
    assert "runs 16 backward passes before each step" in f.fix_attempt
    assert "`(loss / 16).backward()`" in f.fix_attempt


def test_one_backward_pass_a_step_gets_no_accumulation_advice(run_dir):
    lens = gaussian_nll(run_dir, 0.01, raised_to=0.08)
    (f,) = [f for f in lens.findings if f.symptom == "diverging"]
    assert "backward passes before each step" not in f.fix_attempt


def test_lbfgs_evaluating_its_closure_several_times_a_step_is_no_accumulation(run_dir):
    """LBFGS runs 4 backward passes inside each `step(closure)`: its lr too high must not
    be told to divide the loss by 4, which the loop never accumulated."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.LBFGS(model.parameters(), lr=5.0, max_iter=4)
    x = torch.randn(256, 4)
    y = x.sum(1, keepdim=True).sin()

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(30):
            opt.step(closure)
    assert lens.records.meta["in_step_backward_passes"] == 4 * 30
    causes = [c for f in lens.findings for c in f.likely_causes if c.id == "lr_too_high"]
    assert causes, lens.drill["findings"]  # lr 5 blows LBFGS up
    assert all("backward passes before each step" not in c.fix_attempt for c in causes)


def _accumulate(run_dir, opt_cls, **opt_kw):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 32, generator=g)
    y = (x @ torch.randn(32, 10, generator=g)).argmax(1)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = opt_cls(model.parameters(), **opt_kw)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for it in range(40):
            for k in range(16):
                i = ((it * 16 + k) * 16) % 4080
                nn.functional.cross_entropy(model(x[i : i + 16]), y[i : i + 16]).backward()
            opt.step()
            opt.zero_grad()
    return lens


def test_adam_that_diverges_while_accumulating_gets_no_division_advice(run_dir):
    """Adam divides each gradient by its running scale: 16 undivided passes make no larger
    step than one, so its lr too high is not blamed on the missing division."""
    lens = _accumulate(run_dir, torch.optim.Adam, lr=0.5)
    causes = [c for f in lens.findings for c in f.likely_causes if c.id == "lr_too_high"]
    assert causes, lens.drill["findings"]  # Adam at 0.5 blows up
    assert all("backward passes before each step" not in c.fix_attempt for c in causes)


def _summed_mse(run_dir, opt_cls, lr):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = x.sum(1, keepdim=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = opt_cls(model.parameters(), lr=lr)
    loss_fn = nn.MSELoss(reduction="sum")
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(5):
            for i in range(0, 512, 128):
                loss = loss_fn(model(x[i : i + 128]), y[i : i + 128])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return [c for f in lens.findings for c in f.likely_causes if c.id == "lr_too_high"]


def test_a_summed_loss_under_sgd_that_blows_up_says_the_sum_is_the_step_size(run_dir):
    """`MSELoss(reduction="sum")` over batches of 128 at an lr meant for a mean: each SGD
    step is 128x too large. lr_too_high, and the fix says where the 128x comes from."""
    causes = _summed_mse(run_dir, torch.optim.SGD, 0.01)
    assert causes and causes[0].fix_attempt.count('reduction="sum"') == 1, causes
    assert "The loss sums 128 terms" in causes[0].fix_attempt
    assert "divide the lr by 128" in causes[0].fix_attempt


def test_a_summed_loss_under_adam_gets_no_sum_advice(run_dir):
    """Adam's step does not grow with the gradient: a summed loss is no step size there."""
    causes = _summed_mse(run_dir, torch.optim.Adam, 3.0)
    assert causes  # an lr of 3 blows Adam up
    assert all("The loss sums" not in c.fix_attempt for c in causes)


# --- gradient_ascent: steps that climb the loss ------------------------------------------
def _course_line(run_dir, *, sign=1.0, lr=0.1, epochs=20):
    """The course's first model (`nn.Linear(1, 1)`, y = 2x) with the update written by
    hand: `p += sign * lr * p.grad`."""
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 32).unsqueeze(1)
    model = nn.Linear(1, 1)
    with trainlens.watch(model, run_dir=run_dir, quiet=True) as lens:
        for _ in range(epochs):
            loss = nn.functional.mse_loss(model(x), 2 * x)
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p += sign * lr * p.grad
    return lens


def test_a_hand_written_update_that_adds_the_gradient_is_gradient_ascent(run_dir):
    lens = _course_line(run_dir, sign=1.0)
    directions = lens.records.meta["update_direction"]
    assert len(directions) == 5  # the first sampled steps only
    assert all(d["cosine"] > 0.5 for d in directions)  # along the gradient
    (f,) = [f for f in lens.findings if f.symptom == "diverging"]
    assert f.likely_cause == "gradient_ascent"
    top = f.likely_causes[0]
    assert top.confidence == 0.9
    assert "on 5 of the first 5 sampled steps the update pointed up the gradient" in top.evidence
    assert "p -= lr * p.grad" in f.fix_attempt
    assert all(c.confidence <= 0.3 for c in f.likely_causes[1:])


def test_the_same_update_with_the_right_sign_points_down_the_gradient(run_dir):
    lens = _course_line(run_dir, sign=-1.0)
    assert all(d["cosine"] < -0.5 for d in lens.records.meta["update_direction"])
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]


def _negated(run_dir, factor):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(6):
            for i in range(0, 256, 32):
                loss = loss_fn(model(x[i : i + 32]), y[i : i + 32])
                opt.zero_grad()
                (loss * factor).backward()
                opt.step()
    return lens


def test_backward_on_minus_the_loss_is_gradient_ascent(run_dir):
    """`(loss * -1).backward()`: SGD descends the negation faithfully (every update points
    down its gradient), so only the backward root tells: a Mul by a negative constant
    above the logged loss."""
    lens = _negated(run_dir, -1.0)
    assert all(d["cosine"] < 0 for d in lens.records.meta["update_direction"])
    counts = lens.records.meta["negated_loss"]
    assert counts["passes"] == counts["negated"] >= 3
    (f,) = [f for f in lens.findings if f.symptom == "diverging"]
    assert f.likely_cause == "gradient_ascent"
    assert "`backward()` ran on minus the logged loss" in f.likely_causes[0].evidence
    assert "not on `-loss`" in f.fix_attempt


def test_a_loss_scaled_up_before_backward_is_no_ascent(run_dir):
    """A GradScaler-style `(loss * 4).backward()` is counted and not negated."""
    lens = _negated(run_dir, 4.0)
    counts = lens.records.meta["negated_loss"]
    assert counts["passes"] >= 3 and counts["negated"] == 0
    causes = {c.id for f in lens.findings for c in f.likely_causes}
    assert "gradient_ascent" not in causes


def test_a_few_input_rows_a_thousand_times_off_scale_are_named_above_the_gradients(run_dir):
    """One row in 97 scaled by 1000 (a unit mix-up): a typical batch is at unit scale, the
    batches with such a row blow the gradients up and the loss climbs by orders. The
    drill names the rows; exploding_gradient, their mechanism, stays listed below."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 20, generator=g)
    y = (x @ torch.randn(20, 4, generator=g)).argmax(1)
    x[::97] *= 1000
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    lens = fit_epochs(model, opt, (x, y), run_dir, epochs=5)
    (f,) = [f for f in lens.findings if f.symptom == "diverging"]
    assert f.likely_cause == "unnormalized_input"
    top = f.likely_causes[0]
    assert "a few rows are" in top.evidence and "x off the scale of the rest" in top.evidence
    assert "bad = (x.abs() > 100 *" in f.first_check
    assert all(c.confidence <= 0.5 for c in f.likely_causes[1:])


# --- a loss with no floor: a log-likelihood without its minus ------------------------------
def test_a_log_likelihood_without_its_minus_is_a_loss_with_no_floor(run_dir):
    # below zero from the first step and falling faster and faster: it looks like learning
    load_program(PROGRAMS / "mlp_hand_written_nll_minus_sign_missing.py").main(run_dir)
    f = finding(run_dir)
    assert f["severity"] == "error"
    assert [c["id"] for c in f["likely_causes"]] == ["loss_unbounded_below"]
    ev = f["evidence"]
    assert ev["loss_end"] < 2 * ev["loss_start"] < 0
    assert ev["drop_last_third"] > 1.5 * ev["drop_first_third"] > 0
    assert "below zero from its first step" in f["likely_causes"][0]["evidence"]
    assert "Put the minus back" in f["fix_attempt"]
    assert (
        "minus" in f["first_check"] and "Print the loss of the first step: -1." in f["first_check"]
    )


def test_a_gaussian_likelihood_that_crosses_zero_and_speeds_up_is_not_floorless(run_dir):
    # at a small lr its fall speeds up once the mean fits and the variance shrinks, as a
    # loss with no floor does; but it started above zero, which minus a log of
    # probabilities never does
    lens = gaussian_nll(run_dir, 3e-4)
    loss = lens.records.train_loss()
    assert loss.iloc[0] > 0 > loss.iloc[-20:].median()
    assert lens.findings == [], lens.drill["findings"]


def test_a_loss_below_zero_from_the_start_that_settles_is_healthy(run_dir):
    # minus a cosine similarity: below zero throughout, and it ends twice as far below zero
    # as it started (-0.45 -> -1), but it slows down as it nears -1
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    target = x @ torch.randn(16, 8)
    model = nn.Linear(16, 8)
    with torch.no_grad():  # started on the right side, so every loss is below zero
        model.weight.copy_(0.1 * torch.linalg.lstsq(x, target).solution.T)
        model.weight.add_(0.3 * torch.randn(8, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _epoch in range(10):
            for i in range(0, 512, 32):
                cos = nn.functional.cosine_similarity(model(x[i : i + 32]), target[i : i + 32])
                loss = -cos.mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    loss = lens.records.train_loss()
    assert loss.max() < 0 and loss.iloc[-16:].median() < 2 * loss.iloc[:16].median()
    assert lens.findings == [], lens.drill["findings"]
