"""overfit-one-batch: healthy models memorise their batch (exit 0), broken ones fail (exit 1)
with the right cause first, and every bad target or argument is one clear line (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import trainlens

FACTORIES = Path(__file__).resolve().parent / "factories"
sys.path.insert(0, str(FACTORIES))

import broken  # noqa: E402
import healthy  # noqa: E402

TRAINLENS = str(Path(sys.executable).parent / "trainlens")


@pytest.fixture(scope="module")
def cli_env() -> dict[str, str]:
    return dict(os.environ)


def overfit_cli(env, *args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TRAINLENS, "overfit-one-batch", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


# --- healthy models pass -------------------------------------------------------------------
@pytest.mark.parametrize("factory", ["mlp", "cnn", "transformer"])
def test_a_healthy_model_memorises_its_batch_and_exits_0(factory, cli_env, tmp_path):
    run_dir = tmp_path / "run"
    result = overfit_cli(
        cli_env, f"{FACTORIES / 'healthy.py'}:{factory}", "--run-dir", str(run_dir)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith("PASSED: the batch of 16 was memorised in ")
    assert "initial loss" in out and "ln(4) = 1.39: ok" in out
    assert "batch dependency: ok" in out
    assert "A pass proves the model, the loss and the optimizer are wired" in out
    assert "It does not prove that the model generalises" in out
    assert "overfitting one batch" in result.stderr  # the live progress, kept off stdout
    drill = json.loads((run_dir / "drill.json").read_text())
    assert drill["status"] == "healthy" and drill["findings"] == []
    assert drill["overfit"]["passed"] is True
    assert drill["overfit"]["losses"][-1] < 0.05 or drill["overfit"]["accuracy"] == 1.0
    # one renderer: drill.md's section says what the terminal said, line for line
    md = (run_dir / "drill.md").read_text()
    section = md[md.index("## Overfit one batch") :]
    head, *rest = drill["overfit"]["verdict"].splitlines()
    assert f"**{head}**" in section
    assert all(f"- {line}" in section for line in rest)


def test_the_default_optimizer_is_said_and_lr_is_honoured(cli_env, tmp_path):
    result = overfit_cli(
        cli_env,
        f"{FACTORIES / 'healthy.py'}:mlp",
        "--lr",
        "1e-2",
        "--steps",
        "150",
        "--json",
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # stdout is one JSON object and nothing else
    assert data["optimizer"] == "Adam(lr=0.01) (default: no optimizer was given)"
    assert data["passed"] is True and data["steps"] < 150  # stops once memorised
    assert len(data["losses"]) == data["steps"]
    assert data["drill"]["status"] == "healthy"
    assert data["batch_dependency"]["checked"] and not data["batch_dependency"]["mixed"]
    assert data["initial_loss"]["ok"] is True


def test_a_module_target_works_like_a_file_target(cli_env, tmp_path):
    result = overfit_cli(
        cli_env,
        "factories.healthy:regression",
        "--json",
        "--run-dir",
        str(tmp_path / "run"),
        cwd=FACTORIES.parent,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["kind"] == "regression" and data["passed"]
    assert "of the loss of predicting the target mean" in data["criterion"]


# --- broken models fail, with the cause first ------------------------------------------------
@pytest.mark.parametrize(
    ("factory", "symptom", "cause", "module"),
    [
        ("layer_mismatch", "shape_mismatch", "layer_input_mismatch", "0"),
        ("silent_broadcast", "shape_mismatch", "loss_target_shape_mismatch", None),
        ("view_for_permute", "shape_mismatch", "batch_dim_mixing", ""),
        ("nll_on_probabilities", "flat_loss", "softmax_before_loss", "1"),
        ("logits_times_100", "flat_loss", "bad_initial_loss", None),
        ("lr_too_low", "flat_loss", "lr_too_low", None),
        ("detached_features", "flat_loss", "no_gradient_flow", "features.2"),
        ("dead_relu", "flat_loss", "dead_relu", "1"),
    ],
)
def test_a_broken_model_fails_with_the_right_cause_first(
    factory, symptom, cause, module, cli_env, tmp_path
):
    # every one of these causes shows on the first step: 40 steps are plenty
    target = f"{FACTORIES / 'broken.py'}:{factory}"
    result = overfit_cli(cli_env, target, "--steps", "40", "--json", "--run-dir", str(tmp_path))
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["passed"] is False and data["verdict"].startswith("FAILED")
    first = data["drill"]["findings"][0]
    assert (first["symptom"], first["likely_cause"], first["module"]) == (symptom, cause, module)
    assert first["first_check"]
    on_disk = json.loads((tmp_path / "drill.json").read_text())
    assert on_disk["findings"][0]["likely_cause"] == cause
    assert on_disk["overfit"]["passed"] is False


def test_a_failure_prints_the_cause_and_its_first_check(cli_env, tmp_path):
    target = f"{FACTORIES / 'broken.py'}:view_for_permute"
    result = overfit_cli(cli_env, target, "--steps", "20", "--run-dir", str(tmp_path))
    assert result.returncode == 1
    out = result.stdout
    assert out.startswith("FAILED: ")
    assert "batch dependency: samples MIX (output of sample" in out
    assert "error: shape_mismatch: likely batch_dim_mixing" in out
    assert "first check: Feed the model two batches that differ only in sample 1" in out
    assert "the input of `encoder` already mixes samples" in out
    assert "use `x.permute(...)`" in out  # the fix attempt


def test_a_loss_at_init_far_from_ln_classes_fails_even_when_memorised(cli_env, tmp_path):
    result = overfit_cli(
        cli_env, f"{FACTORIES / 'broken.py'}:logits_times_100", "--run-dir", str(tmp_path)
    )
    assert result.returncode == 1
    assert result.stdout.startswith("FAILED: the batch of 16 was memorised, but the loss at ")
    assert "is far from the ln(4) = 1.39 of an untrained model" in result.stdout
    assert "likely bad_initial_loss" in result.stdout


# --- exit 2: one clear line ------------------------------------------------------------------
BROKEN = str(FACTORIES / "broken.py")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no/such/file.py:make"], "target file no/such/file.py not found"),
        (["no_such_package.models:make"], "module no_such_package.models not found"),
        (["just-a-name"], "TARGET must be path/to/file.py:factory or package.module:factory"),
        ([f"{BROKEN}:missing"], "has no 'missing'; define `def missing():`"),
        ([f"{BROKEN}:NOT_CALLABLE"], "is a int, not a function"),
        ([f"{BROKEN}:raises"], "raises() raised RuntimeError: could not open the dataset"),
        ([f"{BROKEN}:returns_a_number"], "returned is a int; return trainlens.Setup(model="),
        ([f"{BROKEN}:batch_not_a_pair"], "must be a pair (inputs, targets), got a 3-item tuple"),
        ([f"{BROKEN}:model_not_a_module"], "must be a torch.nn.Module, got function"),
        ([f"{BROKEN}:layer_mismatch", "--steps", "0"], "--steps must be a positive integer"),
        ([f"{BROKEN}:layer_mismatch", "--steps", "ten"], "--steps must be a positive integer"),
        ([f"{BROKEN}:layer_mismatch", "--lr", "-1"], "--lr must be a positive number"),
    ],
    ids=[
        "file-not-found", "module-not-found", "no-colon", "factory-missing", "not-callable",
        "factory-raises", "wrong-return", "batch-not-pair", "model-not-module", "steps-zero",
        "steps-not-int", "lr-negative",
    ],
)  # fmt: skip
def test_a_bad_target_or_argument_is_one_line_and_exit_2(args, message, cli_env, tmp_path):
    result = overfit_cli(cli_env, *args, "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trainlens: error: ") and message in lines[0], lines[0]


def test_debug_shows_the_traceback_of_the_factory(cli_env, tmp_path):
    result = overfit_cli(cli_env, f"{BROKEN}:raises", "--debug", "--run-dir", str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" in result.stderr and 'raise RuntimeError("could not open' in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("trainlens: error: factory")


# --- the Python API --------------------------------------------------------------------------
def test_the_callers_model_and_optimizer_are_left_unchanged(run_dir):
    setup = healthy.cnn()
    model, (x, y) = setup["model"], setup["batch"]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.eval()  # whatever mode the caller left it in stays
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_before = x.clone()
    result = trainlens.overfit_one_batch(model, (x, y), setup["loss_fn"], opt, run_dir=run_dir)
    assert result.passed, result.summary()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm stats too
    assert not model.training and all(not m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert opt.state == {} and torch.equal(x, x_before)
    assert result.optimizer == "SGD(lr=0.1)"
    assert result.run_dir == run_dir.resolve()
    assert result.losses[0] > result.losses[-1] and len(result.losses) == result.steps
    assert result.findings == [] and result.drill["overfit"]["passed"]


def test_a_regression_batch_is_judged_against_the_target_variance(run_dir):
    setup = healthy.regression()
    result = trainlens.overfit_one_batch(
        setup.model, setup.batch, setup.loss_fn, setup.optimizer, run_dir=run_dir
    )
    variance = float(setup.batch[1].var(unbiased=False))
    assert result.kind == "regression"
    assert result.details["baseline"] == pytest.approx(variance, rel=1e-5)
    assert result.passed and result.losses[-1] <= 0.02 * variance
    assert result.initial_loss["expected"] is None  # no uniform-guess level for MSE


def test_a_model_that_cannot_memorise_fails_the_criterion(run_dir):
    x, y = healthy._classes()
    model = nn.Sequential(nn.Linear(8, 4))  # one linear layer, random labels
    result = trainlens.overfit_one_batch(
        model, (x, y), nn.CrossEntropyLoss(), steps=20, run_dir=run_dir
    )
    assert not result.passed and not result.memorised
    assert result.verdict.startswith("FAILED: the batch of 16 was not memorised in 20 steps")
    assert "classification: final loss < 0.05" in result.criterion


def test_a_functional_loss_and_tuple_inputs_work(run_dir):
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 32), nn.Linear(8, 32)
            self.out = nn.Linear(32, 4)

        def forward(self, x1, x2):
            return self.out(torch.relu(self.a(x1) + self.b(x2)))

    x, y = healthy._classes()
    opt_model = TwoInputs()
    result = trainlens.overfit_one_batch(
        opt_model, ((x, x.flip(0)), y), nn.functional.cross_entropy, lr=1e-2, run_dir=run_dir
    )
    assert result.passed, result.summary()
    assert len(trainlens.load_run(run_dir).records.train_loss()) == result.steps


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"batch": torch.zeros(3)}, r"batch in overfit_one_batch must be a pair"),
        ({"model": "mlp"}, "model in overfit_one_batch must be a torch.nn.Module"),
        ({"loss_fn": "mse"}, "loss_fn in overfit_one_batch must be callable"),
    ],
)
def test_bad_arguments_raise_usage_errors_before_training(kwargs, message, run_dir):
    x, y = healthy._classes()
    args = {"model": nn.Linear(8, 4), "batch": (x, y), "loss_fn": nn.CrossEntropyLoss()}
    with pytest.raises(trainlens.UsageError, match=message):
        trainlens.overfit_one_batch(**{**args, "steps": 5, **kwargs}, run_dir=run_dir)
    assert not run_dir.exists()


def test_setup_accepts_a_dict_and_names_missing_keys():
    x, y = healthy._classes()
    setup = trainlens.Setup.coerce({"model": nn.Linear(8, 4), "batch": (x, y), "loss_fn": abs})
    assert isinstance(setup, trainlens.Setup) and setup.optimizer is None
    with pytest.raises(trainlens.UsageError, match=r"missing \['loss_fn'\]"):
        trainlens.Setup.coerce({"model": nn.Linear(8, 4), "batch": (x, y)})


def test_nll_on_softmax_outputs_is_softmax_before_loss_from_the_first_loss(run_dir):
    setup = broken.nll_on_probabilities()
    model, (x, y) = setup.model, setup.batch
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(3):
            loss = setup.loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    f = lens.findings[0]
    # the softmax where a log-softmax belongs first, the impossible first loss beside it
    assert (f.symptom, f.severity, f.likely_cause, f.module) == (
        "flat_loss",
        "error",
        "softmax_before_loss",
        "1",
    )
    assert [c.id for c in f.likely_causes] == ["softmax_before_loss", "bad_initial_loss"]
    assert "NLLLoss at initialisation is -0.2" in f.top.evidence
    assert "and its input lies in [0" in f.top.evidence  # probabilities, read at step 0
    assert "Replace `1` (Softmax) with `nn.LogSoftmax(dim=1)`" in f.fix_attempt
    assert "output.sum(dim=1)" in f.first_check
    assert lens.records.meta["initial_loss"]["classes"] == 4


# --- the budget decides, it does not time out (issue 19 §6) -------------------------------
def _ten_classes(d_in: int, hidden: int):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, d_in, generator=g), torch.randint(0, 10, (64,), generator=g)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 10)), (x, y)


def test_a_healthy_mlp_on_64_samples_of_10_classes_passes_with_the_default_budget(run_dir):
    model, batch = _ten_classes(20, 32)  # needs more than the first 200 steps at lr 1e-3
    result = trainlens.overfit_one_batch(model, batch, nn.CrossEntropyLoss(), run_dir=run_dir)
    assert result.passed, result.verdict
    assert 200 < result.steps <= 3000 and result.accuracy == 1.0
    assert result.verdict.startswith(f"PASSED: the batch of 64 was memorised in {result.steps}")
    meta = trainlens.load_run(run_dir).records.meta["overfit"]
    assert meta["memorised"] is True and meta["steps"] == result.steps


def test_a_failure_while_the_loss_still_falls_says_give_it_more_steps(run_dir):
    model, batch = _ten_classes(10, 16)
    result = trainlens.overfit_one_batch(
        model, batch, nn.CrossEntropyLoss(), steps=100, run_dir=run_dir
    )
    assert not result.passed and result.steps == 100  # an explicit budget is a hard limit
    assert "still improving" in result.verdict and "steps=200" in result.verdict
    assert trainlens.load_run(run_dir).records.meta["overfit"]["trend"] == "improving"


def test_a_failure_whose_loss_stalled_says_more_steps_will_not_help(run_dir):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 2, generator=g), torch.randint(0, 10, (64,), generator=g)
    torch.manual_seed(0)
    # a linear model cannot separate 64 random points of 10 classes in 2 dimensions
    result = trainlens.overfit_one_batch(nn.Linear(2, 10), (x, y), nn.CrossEntropyLoss(),
                                         run_dir=run_dir)  # fmt: skip
    assert not result.passed
    assert result.steps == 200  # stalled at the first look: the budget is not extended
    assert "stalled" in result.verdict and "more steps alone will not help" in result.verdict
    assert trainlens.load_run(run_dir).records.meta["overfit"]["trend"] == "stalled"


def test_binary_targets_outside_0_1_fail_naming_the_targets_not_more_steps(run_dir):
    """Masks kept as 0/255: BCE's loss falls below zero without end. The verdict names the
    targets' range, and does not send the user to train longer."""
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    masks = (x > 0.5).float() * 255
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))
    result = trainlens.overfit_one_batch(
        model, (x, masks), nn.BCEWithLogitsLoss(), steps=200, run_dir=run_dir
    )
    assert not result.passed and result.losses[-1] < 0
    assert "its targets range over [0, 255], outside [0, 1]" in result.verdict
    assert "falling below zero" in result.verdict and "more steps will not help" in result.verdict
    assert "Give it more steps" not in result.verdict
    first = result.findings[0]
    assert (first.severity, first.likely_causes[0].id) == ("error", "bad_initial_loss")
