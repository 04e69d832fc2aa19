"""Direct evidence does not wait for a symptom (issue 18 §5, §6, §7).

The program collection (tests/programs/) asserts each planted bug's symptom, first cause
and module; here the details a user reads: the call order, the scheduler and the step the
lr collapsed at, a fix that fixes the bug instead of masking it, a failed overfit run
that says why, and the loop-order patches gone after the block.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import trainlens
from models import fit_epochs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from diagnosis import PROGRAMS, load_program


def run(name: str, run_dir: Path) -> dict:
    load_program(PROGRAMS / f"{name}.py").main(run_dir)
    return json.loads((run_dir / "drill.json").read_text())


def finding(drill: dict, symptom: str) -> dict:
    found = [f for f in drill["findings"] if f["symptom"] == symptom]
    assert len(found) == 1, drill["findings"]
    return found[0]


def ids(f: dict) -> list[str]:
    return [c["id"] for c in f["likely_causes"]]


# --- §6: evidence of a bug on its own ----------------------------------------------------
def test_forgotten_zero_grad_with_momentum_says_zero_grad_missing_not_clip(run_dir):
    f = finding(run("mlp_zero_grad_missing_momentum", run_dir), "diverging")
    assert f["severity"] == "error"
    assert ids(f)[0] == "zero_grad_missing"
    assert "exploding_gradient" in ids(f)  # kept, below its root cause
    assert "still in `.grad`" in f["likely_causes"][0]["evidence"]
    assert "zero_grad()" in f["fix_attempt"] and "clip" not in f["fix_attempt"].lower()


def test_softmax_before_cross_entropy_is_found_while_the_loss_still_falls(run_dir):
    drill = run("mlp_softmax_before_cross_entropy", run_dir)
    f = finding(drill, "flat_loss")
    assert f["severity"] == "warning" and drill["status"] == "warning"
    assert ids(f)[0] == "softmax_before_loss" and f["module"] == "classifier.2"
    assert f["evidence"]["symptom_shown"] is None
    assert "Softmax" in f["fix_attempt"]


def test_log_softmax_into_cross_entropy_on_a_run_that_learns_stays_clean(run_dir):
    # log-softmax is idempotent: CrossEntropyLoss on log-probabilities trains exactly as on
    # logits, so a run that learns has nothing to be warned about
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = (x @ torch.randn(10, 3)).argmax(1)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3), nn.LogSoftmax(1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(4):
            for i in range(0, 256, 32):
                opt.zero_grad()
                nn.CrossEntropyLoss()(model(x[i : i + 32]), y[i : i + 32]).backward()
                opt.step()
    assert lens.findings == []


# --- §7: the order of the loop ---------------------------------------------------------
def test_scheduler_stepped_every_batch_names_the_scheduler_and_the_step(run_dir):
    drill = run("cnn_steplr_stepped_every_batch", run_dir)
    f = finding(drill, "flat_loss")
    top = f["likely_causes"][0]
    assert f["severity"] == "error" and top["id"] == "lr_too_low"
    assert "StepLR, stepped 80 times in 80 optimizer steps" in top["evidence"]
    assert 1 <= top["step"] <= 10  # 0.1 * 0.1**k falls below 1e-4 after a few batches
    assert "out of the batch loop" in f["fix_attempt"]
    meta = json.loads((run_dir / "run.json").read_text())["loop_order"]
    assert meta["schedulers"]["StepLR"]["calls"] == 80
    assert meta["optimizer_lr"] == pytest.approx(0.1)


def test_a_warm_up_that_never_ends_is_lr_too_low_with_the_warm_up_named(run_dir):
    f = finding(run("gpt_warmup_never_ends", run_dir), "flat_loss")
    assert ids(f)[0] == "lr_too_low"
    assert "warm-up that never ends" in f["likely_causes"][0]["evidence"]
    assert "optimizer steps" in f["fix_attempt"]


@pytest.mark.parametrize("set_to_none", [True, False])
# every gradient is zero at the step: the curves draw no gradient line, and no legend
@pytest.mark.filterwarnings("error:No artists with labels:UserWarning")
def test_zero_grad_between_backward_and_step_is_optimizer_not_stepping(run_dir, set_to_none):
    torch.manual_seed(0)
    x, y = torch.randn(256, 6), torch.randn(256, 1)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
        for _ in range(5):
            for i in range(0, 256, 32):
                loss = nn.functional.mse_loss(model(x[i : i + 32]), y[i : i + 32])
                loss.backward()
                opt.zero_grad(set_to_none=set_to_none)
                opt.step()
    f = finding(json.loads((run_dir / "drill.json").read_text()), "flat_loss")
    assert ids(f)[0] == "optimizer_not_stepping"
    assert "no_gradient_flow" not in ids(f)  # the graph is not cut
    assert f"zero_grad(set_to_none={set_to_none})" in f["likely_causes"][0]["evidence"]
    assert "never between them" in f["fix_attempt"]


@pytest.mark.parametrize(("make", "forgets"), [
    (lambda params: torch.optim.Adam(params, lr=1e-3), "Adam's moment estimates"),
    (lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9), "its momentum"),
], ids=["Adam", "SGD with momentum"])  # fmt: skip
def test_an_optimizer_built_inside_the_loop_is_optimizer_rebuilt(make, forgets, run_dir):
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    y = (x[:, :2].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    watched = make(model.parameters())  # the one built above the loop, and watched
    with trainlens.watch(model, watched, run_dir=run_dir, quiet=True) as lens:
        for _ in range(5):
            for i in range(0, 256, 32):
                optimizer = make(model.parameters())  # the bug: one per step
                loss = nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    f = finding(json.loads((run_dir / "drill.json").read_text()), "flat_loss")
    assert ids(f)[0] == "optimizer_rebuilt"
    ev = f["likely_causes"][0]["evidence"]
    assert "40 new" in ev and "stepped 40 times" in ev and f"forgets {forgets}" in ev
    assert "before the training loop" in f["fix_attempt"]
    # one entry for 40 optimizers alike: the records stay bounded however long the loop
    others = lens.records.meta["loop_order"]["other_optimizers"]
    assert [(o["instances"], o["steps"], o["params_outside"]) for o in others] == [(40, 40, 0)]


def test_a_second_optimizer_built_once_is_not_optimizer_rebuilt(run_dir):
    """SparseAdam for the embeddings, Adam for the rest, both built once."""
    torch.manual_seed(0)
    emb, head = nn.Embedding(50, 8, sparse=True), nn.Linear(8, 1)
    model = nn.Sequential(emb, nn.Flatten(), head)
    dense, sparse = torch.optim.Adam(head.parameters()), torch.optim.SparseAdam(emb.parameters())
    ids_, y = torch.randint(0, 50, (256, 1)), torch.randn(256, 1)
    with trainlens.watch(model, dense, run_dir=run_dir, quiet=True) as lens:
        for i in range(0, 256, 16):
            loss = nn.functional.mse_loss(model(ids_[i : i + 16]), y[i : i + 16])
            dense.zero_grad()
            sparse.zero_grad()
            loss.backward()
            dense.step()
            sparse.step()
    others = lens.records.meta["loop_order"]["other_optimizers"]
    assert [(o["optimizer"], o["instances"], o["steps"]) for o in others] == [("SparseAdam", 1, 16)]
    assert not [c for f in lens.findings for c in f.likely_causes if c.id == "optimizer_rebuilt"]


def test_one_optimizer_per_layer_is_one_kind_and_not_optimizer_rebuilt(run_dir):
    """One optimizer per layer beside the watched one (layer-wise learning rates written
    by hand): optimizers alike are described once, and built once they are no bug."""
    torch.manual_seed(0)
    layers = [nn.Linear(4, 4) for _ in range(12)]
    model = nn.Sequential(*layers)
    watched = torch.optim.SGD(layers[0].parameters(), lr=0.01)
    per_layer = [torch.optim.SGD(layer.parameters(), lr=0.01) for layer in layers[1:]]
    with trainlens.watch(model, watched, run_dir=run_dir, quiet=True) as lens:
        for _ in range(3):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            for opt in [watched, *per_layer]:
                opt.zero_grad()
            loss.backward()
            for opt in [watched, *per_layer]:
                opt.step()
    others = lens.records.meta["loop_order"]["other_optimizers"]
    # the eleven have one shape (2 tensors of layers outside the watched optimizer): one kind
    assert [(o["instances"], o["steps"], o["params_outside"]) for o in others] == [(11, 33, 2)]
    assert not [c for f in lens.findings for c in f.likely_causes if c.id == "optimizer_rebuilt"]


def test_other_optimizers_are_described_up_to_eight_kinds(run_dir):
    torch.manual_seed(0)
    layers = [nn.Linear(4, 4) for _ in range(12)]
    model = nn.Sequential(*layers)
    watched = torch.optim.SGD(layers[0].parameters(), lr=0.01)
    # eleven kinds: over the last 1, 2, ..., 11 layers
    tails = [
        torch.optim.SGD([p for layer in layers[-k:] for p in layer.parameters()], lr=1e-3)
        for k in range(1, 12)
    ]
    with trainlens.watch(model, watched, run_dir=run_dir, quiet=True) as lens:
        for _ in range(2):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            model.zero_grad()
            loss.backward()
            for opt in [watched, *tails]:
                opt.step()
    others = lens.records.meta["loop_order"]["other_optimizers"]
    assert [o["params_outside"] for o in others] == [2 * k for k in range(1, 9)]
    assert all((o["instances"], o["steps"]) == (1, 2) for o in others)


def test_a_zero_grad_after_a_skipped_step_is_not_a_clearing(run_dir):
    # GradScaler skips a step (inf gradients): backward, no step, zero_grad, backward, step
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x.sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for s in range(40):
            opt.zero_grad()
            nn.CrossEntropyLoss()(model(x), y).backward()
            if s % 5 != 4:
                opt.step()
    assert lens.records.meta["loop_order"]["cleared_before_step"] == 0
    assert not [
        c for f in lens.findings for c in f.likely_causes if c.id == "optimizer_not_stepping"
    ]


def test_the_loop_order_patches_are_gone_after_the_block(run_dir):
    from torch.optim.lr_scheduler import LRScheduler

    step_before = vars(LRScheduler)["step"]
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    with pytest.raises(ValueError), trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
        assert "zero_grad" in vars(opt)
        opt.zero_grad()
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
        sched.step()
        raise ValueError("the user's own error")
    assert "zero_grad" not in vars(opt)
    assert vars(LRScheduler)["step"] is step_before


# --- §5: a failed overfit-one-batch always says why --------------------------------------
def test_overfit_with_softmax_before_the_loss_fails_with_ranked_causes(run_dir):
    torch.manual_seed(0)
    x, y = torch.randn(16, 8), torch.arange(16) % 4
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4), nn.Softmax(dim=1))
    result = trainlens.overfit_one_batch(model, (x, y), nn.CrossEntropyLoss(), run_dir=run_dir)
    assert not result.passed and not result.memorised
    drill = json.loads((run_dir / "drill.json").read_text())
    f = finding(drill, "flat_loss")
    assert f["severity"] == "error" and ids(f)[0] == "softmax_before_loss"
    assert "likely causes, most likely first: softmax_before_loss" in result.verdict


def test_overfit_that_nothing_explains_says_what_was_ruled_out(run_dir):
    torch.manual_seed(0)
    x, y = torch.randn(16, 8), torch.arange(16) % 4
    model = nn.Sequential(nn.Linear(8, 4))
    result = trainlens.overfit_one_batch(
        model, (x, y), nn.CrossEntropyLoss(), steps=20, run_dir=run_dir
    )
    assert not result.passed and result.findings == []
    assert "no recorded evidence explains it; ruled out: " in result.verdict
    assert "probabilities or log-probabilities fed to a logits loss" in result.verdict
    assert "print next: " in result.verdict


def test_a_per_batch_warm_up_longer_than_the_run_is_not_told_to_step_per_epoch(run_dir):
    # annotated-transformer's habit: lr=1.0 in the optimizer, the real rate from a LambdaLR
    # stepped every batch; here its warm-up (40 000 steps) is far longer than the run
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x @ torch.randn(8, 3)).argmax(1)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)

    def rate(step, d_model=32, warmup=40_000):
        step = max(step, 1)
        return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
        for _ in range(6):
            for i in range(0, 256, 32):
                opt.zero_grad()
                criterion(model(x[i : i + 32]), y[i : i + 32]).backward()
                opt.step()
                sched.step()
    f = finding(json.loads((run_dir / "drill.json").read_text()), "flat_loss")
    top = f["likely_causes"][0]
    assert top["id"] == "lr_too_low" and "LambdaLR" in top["evidence"]
    assert "warm-up that never ends" in top["evidence"]
    assert "batch loop" not in f["fix_attempt"]


def test_the_cli_overfit_failure_prints_ranked_causes_and_writes_a_failed_drill(tmp_path):
    import subprocess

    (tmp_path / "softmax_head.py").write_text(
        "import torch\nfrom torch import nn\nimport trainlens\n\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    x, y = torch.randn(16, 8), torch.arange(16) % 4\n"
        "    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4), nn.Softmax(1))\n"
        "    return trainlens.Setup(model=model, batch=(x, y), loss_fn=nn.CrossEntropyLoss())\n"
    )
    trainlens_cli = str(Path(sys.executable).parent / "trainlens")
    # the package under test, also when this test runs from another working directory
    src = str(Path(trainlens.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [trainlens_cli, "overfit-one-batch", "softmax_head.py:make", "--run-dir", "run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert out.returncode == 1, out.stderr
    assert "likely causes, most likely first: softmax_before_loss" in out.stdout
    drill = json.loads((tmp_path / "run" / "drill.json").read_text())
    assert drill["status"] == "failed"
    assert finding(drill, "flat_loss")["likely_cause"] == "softmax_before_loss"


# --- layers the forward runs that the model does not own ---------------------------------
class _Listed(nn.Module):
    """Its middle layers kept as `kind`: a plain list, an nn.ModuleList, or made in forward."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.inp = nn.Linear(8, 32)
        layers = [nn.Linear(32, 32) for _ in range(2)]
        self.mid = nn.ModuleList(layers) if kind == "module_list" else layers
        self.out = nn.Linear(32, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        if self.kind == "made":
            h = torch.relu(nn.Linear(32, 32)(h))  # a new layer, new random weights, each call
        else:
            for layer in self.mid:
                h = torch.relu(layer(h))
        return self.out(h)


def _train_listed(kind: str, run_dir: Path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    model = _Listed(kind)
    return fit_epochs(model, torch.optim.Adam(model.parameters(), lr=1e-3), (x, y), run_dir,
                      epochs=4)  # fmt: skip


def test_layers_in_a_plain_list_are_named_where_the_model_holds_them(run_dir):
    lens = _train_listed("list", run_dir)
    assert lens.records.meta["unregistered_modules"] == [
        {"where": f"mid[{i}]", "type": "Linear", "params": 32 * 32 + 32, "in_optimizer": False}
        for i in range(2)
    ]
    causes = [c for f in lens.drill["findings"] for c in f["likely_causes"]]
    top = next(c for c in causes if c["id"] == "params_not_in_optimizer")
    assert "`mid[0]` (Linear), `mid[1]` (Linear)" in top["evidence"]
    assert "held in a plain Python list or dict" in top["evidence"]
    f = next(f for f in lens.drill["findings"] if f["likely_cause"] == "params_not_in_optimizer")
    assert "nn.ModuleList" in f["fix_attempt"]


def test_unowned_layers_leave_no_conclusion_by_elimination_beside_them(run_dir):
    """Layers the model does not own never train, so the machinery is not healthy: the
    flat finding does not also offer `label_mismatch` (targets nothing explains), whose
    evidence said `params_not_in_optimizer` was ruled out."""
    lens = _train_listed("list", run_dir)
    flat = next(f for f in lens.drill["findings"] if f["symptom"] == "flat_loss")
    ids = [c["id"] for c in flat["likely_causes"]]
    assert ids[0] == "params_not_in_optimizer"
    assert "label_mismatch" not in ids and "unknown" not in ids
    assert "params_not_in_optimizer" not in str(flat["evidence"].get("ruled_out", []))


def test_a_layer_made_inside_forward_is_named_as_made_there(run_dir):
    lens = _train_listed("made", run_dir)
    found = lens.records.meta["unregistered_modules"]
    assert found and all(m["where"] is None and m["type"] == "Linear" for m in found)
    f = next(f for f in lens.drill["findings"] if f["likely_cause"] == "params_not_in_optimizer")
    assert "made in `forward()`" in f["likely_causes"][0]["evidence"]
    assert "constructed there" in f["first_check"]


def test_layers_in_a_module_list_are_the_models_own(run_dir):
    lens = _train_listed("module_list", run_dir)
    assert lens.records.meta["unregistered_modules"] == []
    causes = {c.id for f in lens.findings for c in f.likely_causes}
    assert "params_not_in_optimizer" not in causes


def test_an_attribute_that_cannot_be_walked_leaves_the_place_unknown_not_the_drill_lost(
    run_dir,
):
    """Finding where the model holds a layer it does not own walks its attributes; one
    that raises when read (a mapping of the user's own) costs the place, never the run's
    drill."""

    class Unreadable(dict):
        def items(self):
            raise RuntimeError("not readable")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = Unreadable()  # walked before the list below
            self.inp = nn.Linear(8, 16)
            self.mid = [nn.Linear(16, 16)]  # not registered
            self.out = nn.Linear(16, 3)

        def forward(self, x):
            return self.out(torch.relu(self.mid[0](torch.relu(self.inp(x)))))

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for i in range(0, 64, 16):
            loss = nn.functional.cross_entropy(model(x[i : i + 16]), y[i : i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert (run_dir / "drill.json").exists()
    (found,) = lens.records.meta["unregistered_modules"]
    assert (found["where"], found["type"]) == (None, "Linear")
