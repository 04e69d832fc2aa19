"""watch() around a user's own loop: what is recorded, where it goes, how it reads back."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainlens
from models import (
    SmallCNN,
    TinyTransformer,
    classification_data,
    image_data,
    mlp,
    token_data,
    train,
)
from trainlens._demo import load_example
from trainlens._probes._state import Sampling
from trainlens._views import param_stats


def test_first_course_loop_is_healthy_and_learns_two(run_dir):
    lens = load_example("linear_regression.py").main(run_dir=run_dir)
    assert lens.drill["status"] == "healthy"
    assert lens.findings == []
    assert lens.drill["steps"] == 200  # 20 epochs x 10 batches
    assert lens.model.weight.item() == pytest.approx(2.0, abs=1e-3)
    assert (run_dir / "drill.json").is_file() and (run_dir / "drill.md").is_file()


@pytest.mark.parametrize(
    ("make_model", "data", "lr"),
    [
        (lambda: mlp(), classification_data(), 1e-2),
        (lambda: SmallCNN(), image_data(), 1e-2),
        (lambda: TinyTransformer(), token_data(), 1e-3),
    ],
    ids=["mlp", "cnn", "transformer"],
)
def test_healthy_models_give_a_clean_drill(make_model, data, lr, run_dir):
    lens = train(make_model(), data, steps=30, lr=lr, val=data, run_dir=run_dir)
    assert lens.drill["status"] == "healthy", lens.drill["findings"]
    assert lens.findings == []
    losses = lens.records.train_loss()
    assert losses.iloc[-5:].mean() < losses.iloc[:5].mean()  # it really trained


def test_losses_are_captured_with_their_split(run_dir):
    x, y = classification_data()
    lens = train(mlp(), (x, y), steps=30, val=(x, y), run_dir=run_dir)
    losses = lens.records.losses
    assert (losses["split"] == "train").sum() == 30
    val = losses[losses["split"] == "val"]
    assert list(val["step"]) == [10, 20, 30]  # evaluated after steps 10, 20, 30
    assert set(losses["source"]) == {"CrossEntropyLoss"}
    assert math.isfinite(losses["value"].iloc[0])


def test_functional_loss_logged_by_hand_and_explicit_split_wins(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = classification_data()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(5):
            loss = F.cross_entropy(model(x), y)
            lens.log_loss(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
        lens.log_loss(0.25, split="val")
    df = lens.records.losses
    assert list(df["split"]) == ["train"] * 5 + ["val"]
    assert df["value"].iloc[-1] == 0.25
    # F.cross_entropy is captured by itself; logging it by hand does not count it twice
    assert list(df["source"]) == ["F.cross_entropy"] * 5 + ["log_loss"]


def test_log_loss_outside_the_block_says_what_to_do(run_dir):
    lens = trainlens.watch(mlp(), run_dir=run_dir, quiet=True)
    with pytest.raises(trainlens.UsageError, match="inside its `with watch"):
        lens.log_loss(1.0)


def test_user_defined_loss_subclass_is_captured(run_dir):
    class MyLoss(nn.modules.loss._Loss):
        def forward(self, pred, target):
            return ((pred - target) ** 2).mean()

    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(3):
            loss = MyLoss()(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert list(lens.records.losses["source"]) == ["MyLoss"] * 3


def test_without_an_optimizer_a_step_is_a_backward_pass(run_dir):
    model = nn.Linear(4, 1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with trainlens.watch(model, run_dir=run_dir, quiet=True) as lens:
        for _ in range(4):
            loss = nn.MSELoss()(model(x), y)
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
    assert lens.drill["steps"] == 4
    params = lens.records.params
    weight = params[params["param"] == "weight"].set_index("step")
    assert weight["grad_norm"].gt(0).all()
    # the manual update of step k shows as the change measured at step k + 1
    assert weight["update_norm"].iloc[1:].gt(0).all()


def test_update_norm_is_learning_rate_times_gradient_for_plain_sgd(run_dir):
    model = nn.Sequential(nn.Linear(300, 400), nn.Tanh(), nn.Linear(400, 2))
    x, y = torch.randn(32, 300), torch.randint(0, 2, (32,))
    lens = train(model, (x, y), steps=5, lr=0.05, optimizer=torch.optim.SGD, run_dir=run_dir)
    p = lens.records.params
    # 120 000 weights: the update is estimated from a strided sample of 4096 of them
    big = p[p["param"] == "0.weight"]
    ratio = big["update_norm"] / (0.05 * big["grad_norm"])
    assert ratio.between(0.9, 1.1).all(), ratio.tolist()
    small = p[p["param"] == "2.bias"]  # two numbers: measured exactly
    assert (small["update_norm"] / (0.05 * small["grad_norm"])).sub(1).abs().max() < 1e-4


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_update_norm_of_a_parameter_stored_out_of_order_is_measured_on_its_storage(layout, run_dir):
    """A `channels_last` conv weight, or a weight made from a transposed tensor, is not
    contiguous: a sample taken through `reshape` was a copy, whose update was always 0."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3)
    if layout == "transposed":
        conv.weight = nn.Parameter(
            conv.weight.detach().transpose(0, 1).contiguous().transpose(0, 1)
        )
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2))
    x = torch.randn(8, 16, 8, 8)
    if layout == "channels_last":
        model, x = (
            model.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )
    assert not conv.weight.is_contiguous() and conv.weight.numel() > 4096
    y = torch.randint(0, 2, (8,))
    lens = train(model, (x, y), steps=4, lr=0.05, optimizer=torch.optim.SGD, run_dir=run_dir)
    p = lens.records.params
    weight = p[p["param"] == "0.weight"]
    ratio = weight["update_norm"] / (0.05 * weight["grad_norm"])
    assert ratio.between(0.8, 1.2).all(), ratio.tolist()


def test_records_round_trip_through_load_run(run_dir):
    lens = train(mlp(), classification_data(), steps=12, run_dir=run_dir)
    run = trainlens.load_run(run_dir)
    assert run.drill == json.loads((run_dir / "drill.json").read_text()) == lens.drill
    for name, frame in lens.records.frames.items():
        pd.testing.assert_frame_equal(run.records.table(name), frame, check_dtype=False)
    assert run.records.meta["steps"] == 12
    assert run.records.meta["optimizer"]["class"] == "Adam"
    assert sorted(run.records.meta["params"]) == sorted(n for n, _ in lens.model.named_parameters())


def test_shape_trace_keeps_each_new_signature_once(run_dir):
    x, y = classification_data(n=40)
    # batches of 16, 16, 8, 16, ...: the last batch of the epoch has a new shape
    lens = train(mlp(), (x, y), steps=9, batch=16, run_dir=run_dir)
    shapes = lens.records.shapes
    first = shapes[shapes["module"] == "0"]
    assert [json.loads(s)[0][0] for s in first["inputs"]] == [16, 8]
    md = (run_dir / "drill.md").read_text()
    assert "## Shape trace" in md and "[16, 8]" in md and "[16, 32]" in md


def test_dataclass_dict_and_tuple_outputs_are_traced(run_dir):
    @dataclass
    class Out:
        logits: torch.Tensor
        hidden: torch.Tensor

    class Multi(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            h = self.body(x)
            return Out(self.head(h), h), {"h": h}, (h, h.sum())

    model = Multi()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(3):
            out, _, _ = model(torch.randn(5, 4))
            loss = nn.CrossEntropyLoss()(out.logits, torch.zeros(5, dtype=torch.long))
            opt.zero_grad()
            loss.backward()
            opt.step()
    root = lens.records.shapes.query("module == ''").iloc[0]
    assert json.loads(root["outputs"]) == [[5, 2], [5, 8], [5, 8], [5, 8], []]
    assert lens.drill["status"] == "healthy"


def test_activation_statistics_are_sampled_for_leaf_modules(run_dir):
    lens = train(mlp(), classification_data(), steps=3, run_dir=run_dir)
    acts = lens.records.activations
    relu = acts[acts["module"] == "1"]
    assert list(relu["step"]) == [0, 1, 2]
    assert relu["zero_frac"].between(0.05, 0.95).all()  # a live ReLU: some zeros, not all
    assert "" not in set(acts["module"])  # containers are not leaves


def test_sampling_thins_out_costly_statistics_after_the_dense_steps(run_dir):
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(4, 2), torch.randn(4, 1)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True, sample_every=25) as lens:
        for _ in range(260):
            loss = nn.MSELoss()(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    steps = sorted(set(lens.records.params["step"]))
    # every step of the first 10, then every 2nd, 4th, 8th, 16th as the run doubles, then
    # one in sample_every
    assert steps == [
        *range(10), *range(10, 20, 2), *range(20, 40, 4), *range(40, 80, 8),
        *range(80, 160, 16), *range(175, 260, 25),
    ]  # fmt: skip
    assert len(lens.records.losses) == 260  # the loss is cheap: every step


def test_a_batch_tensor_refilled_in_place_keeps_each_steps_input_statistics(run_dir):
    # a loop that reuses one preallocated batch tensor (pinned-memory style): the input
    # statistics are taken at the read-back, from a copy made at each step
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.empty(16, 8), torch.zeros(16, 1)
    g = torch.Generator().manual_seed(0)
    seen = []
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
        for step in range(12):
            x.copy_(torch.randn(16, 8, generator=g) * (step + 1) + 10 * step)
            if step == 3:
                x[0, 0] = math.nan  # a bad batch: its mean and std are not numbers
            seen.append(x.clone())
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    inputs = trainlens.load_run(run_dir).records.inputs.set_index("step")
    assert list(inputs.index) == [s for s in range(12) if Sampling()(s)]
    for step in inputs.index:
        row, data = inputs.loc[step], seen[step]
        if step == 3:
            assert math.isnan(row["mean"]) and math.isnan(row["std"])
            assert row["nonfinite_frac"] == pytest.approx(1 / 128)
            continue
        assert row["mean"] == pytest.approx(float(data.mean()), rel=1e-4, abs=1e-4)
        assert row["std"] == pytest.approx(float(data.std()), rel=1e-4)
        assert (row["min"], row["max"]) == (float(data.min()), float(data.max()))
        assert row["nonfinite_frac"] == 0


def test_a_small_output_changed_in_place_afterwards_keeps_the_statistics_it_had(run_dir):
    # small outputs are copied and reduced at the read-back; the layer after this one
    # (ReLU(inplace=True)) and the loop's own `+= 1` write into the tensors later
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            h = self.fc(x)
            seen.append(("fc", h.detach().clone()))
            out = self.act(h)  # zeroes fc's output where it was negative, in place
            seen.append(("act", out.detach().clone()))
            return out

    torch.manual_seed(0)
    model, seen = Net(), []
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x = torch.randn(8, 4)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
        for _ in range(4):
            out = model(x)
            loss = out.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                out += 1  # after the step: the copies were taken at the forward
        with torch.no_grad():
            model.fc.bias.fill_(math.nan)  # one step whose outputs hold NaN
        out = model(x)
        opt.zero_grad()
        out.sum().backward()
        opt.step()
    acts = trainlens.load_run(run_dir).records.activations
    assert len(acts) == 10
    seen = seen[-10:]  # before them: the first-batch check's own forward of the model
    rows = acts.sort_values(["step"], kind="stable").iterrows()
    for (name, data), (_, row) in zip(seen, rows, strict=True):
        assert row["module"] == name
        assert row["zero_frac"] == pytest.approx(float((data == 0).float().mean()))
        if data.isnan().any():
            assert math.isnan(row["mean_abs"]) and math.isnan(row["max_abs"])
            continue
        assert row["mean_abs"] == pytest.approx(float(data.abs().mean()))
        assert row["max_abs"] == float(data.abs().max())
    # fc's rows saw its negative outputs, before the ReLU wrote zeros over them
    assert (acts[acts["module"] == "fc"]["zero_frac"][:4] == 0).all()
    assert (acts[acts["module"] == "act"]["zero_frac"][:4] > 0.2).all()


def test_parameter_medians_are_those_of_the_run_not_of_its_densely_sampled_start(tmp_path):
    # the gradients shrink as the fit converges; sampling thins out over the run, so a
    # plain median over the sampled rows would describe the first steps
    def run(run_dir, **watch):
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        x = torch.randn(64, 4)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True, **watch) as lens:
            for _ in range(400):
                loss = F.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return lens.records

    thin = run(tmp_path / "thin")
    dense = run(tmp_path / "dense", sample_every=1)  # every step: the run's true median
    truth = dense.params[dense.params["param"] == "weight"]["grad_norm"].median()
    weighted = param_stats(thin).loc["weight", "grad"]
    plain = thin.params[thin.params["param"] == "weight"]["grad_norm"].median()
    # the gradient falls ~20x every 50 steps here: one sample in 20 steps pins the median
    # to within a factor of 2; the plain median lands ~1000x off, among the first steps
    assert truth / 3 < weighted < truth * 3
    assert plain > 100 * truth


class _FailsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("planted failure in backward")


@pytest.mark.parametrize("where", ["in backward", "after backward"])
def test_the_phase_of_an_exception_is_backward_only_when_backward_raised_it(run_dir, where):
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    with pytest.raises(RuntimeError, match="planted"):
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
            for step in range(3):
                if where == "in backward" and step == 2:
                    # raises once the parameters' gradients have arrived
                    out = model(_FailsInBackward.apply(x.clone().requires_grad_()))
                else:
                    out = model(x)
                loss = F.mse_loss(out, y)
                opt.zero_grad()
                loss.backward()
                if where == "after backward" and step == 2:
                    raise RuntimeError("planted failure between backward and step")
                opt.step()
    exception = trainlens.load_run(run_dir).drill["exception"]
    assert exception["step"] == 2
    assert exception["phase"] == ("backward" if where == "in backward" else None)
