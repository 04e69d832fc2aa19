"""torch.compile: watch records what runs eagerly, says what it cannot see, and adds no graphs.

backend="eager" (and one "aot_eager" run, which builds a compiled backward) keep these fast:
the point is dynamo's behaviour with trainlens's hooks, not generated kernels.
"""

from __future__ import annotations

import contextlib
import json
import sys

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

import trainlens
from trainlens._probes._state import Sampling

STEPS = 12


class Net(nn.Module):
    # a user's own class: `model.compile()` on a bare nn.Sequential compiles nothing
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.body(x))


def _setup():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    return model, opt, x, y


def _train(mode: str, watched: bool, run_dir, backend: str = "eager"):
    """mode: "wrapper" (watch the compiled model), "inside" (compile in the block), "method"."""
    torch._dynamo.reset()
    counters.clear()
    model, opt, x, y = _setup()
    net = torch.compile(model, backend=backend) if mode == "wrapper" else model
    loss_fn = nn.CrossEntropyLoss()
    lens = trainlens.watch(net, opt, run_dir=run_dir, quiet=True) if watched else None
    with lens if lens is not None else contextlib.nullcontext():
        if mode == "inside":
            net = torch.compile(model, backend=backend)
        elif mode == "method":
            model.compile(backend=backend)
        for _ in range(STEPS):
            loss = loss_fn(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    stats = {
        "graphs": counters["stats"]["unique_graphs"],
        "frames": counters["frames"]["ok"],
        "breaks": sum(counters["graph_break"].values()),
        "recompiles": sum(counters["recompiles"].values()),
    }
    return lens, model, stats


@pytest.mark.parametrize("mode", ["wrapper", "method"])
def test_watch_adds_no_graph_break_or_recompilation(mode, tmp_path):
    _, plain_model, plain = _train(mode, False, None)
    lens, watched_model, watched = _train(mode, True, tmp_path / "run")
    assert plain["graphs"] >= 1
    assert watched["graphs"] == plain["graphs"], (watched, plain)
    assert watched["breaks"] == plain["breaks"] == 0
    assert watched["recompiles"] == plain["recompiles"] == 0
    # dynamo meets the root's hooks and the global hooks as frames of their own
    # (nn.Module.__call__ is not traced): they return at once and hold no graph
    assert watched["frames"] >= plain["frames"]
    # and recording changed nothing the model computed
    for a, b in zip(plain_model.parameters(), watched_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert lens.drill["status"] == "healthy"


def test_a_longer_compiled_run_compiles_no_hook_of_trainlens_again(tmp_path, monkeypatch):
    """Dynamo meets trainlens's hooks as frames once; none is compiled again on later
    steps. (A list the attention probe appended to while dynamo traced made dynamo guard
    on its length and recompile that hook on every call, up to its cache limit, with a
    warning on stderr each time.)"""
    monkeypatch.setattr(sys.modules[__name__], "STEPS", 3)
    _, _, short = _train("wrapper", True, tmp_path / "short")
    monkeypatch.setattr(sys.modules[__name__], "STEPS", 40)
    lens, _, long = _train("wrapper", True, tmp_path / "long")
    assert long["frames"] == short["frames"], (short, long)
    assert long["recompiles"] == 0 and lens.drill["steps"] == 40


def test_watch_on_compiled_model_records_what_runs_eagerly(tmp_path, capfd):
    lens, _, _ = _train("wrapper", True, tmp_path / "run", backend="aot_eager")
    rec = lens.records
    assert len(rec.steps) == STEPS and len(rec.train_loss()) == STEPS
    # gradients and updates, named without torch.compile's `_orig_mod.` prefix
    assert set(rec.params["param"]) == {"body.0.weight", "body.0.bias", "head.weight", "head.bias"}
    assert rec.params["grad_norm"].gt(0).all() and rec.params["update_norm"].gt(0).any()
    # the compiled boundary: the model's input and its root shapes
    assert list(rec.inputs["step"]) == [s for s in range(STEPS) if Sampling()(s)]
    root = rec.shapes[rec.shapes["module"] == ""]
    assert json.loads(root["outputs"].iloc[0]) == [[16, 3]]
    assert root["type"].iloc[0] == "Net"
    # and what it cannot see is said in run.json, drill.md and once on stderr
    meta = json.loads((lens.run_dir / "run.json").read_text())
    assert meta["compile"]["how"] == "watch was given the torch.compile wrapper"
    assert meta["wrappers"] == ["OptimizedModule"]
    md = (lens.run_dir / "drill.md").read_text()
    assert "What trainlens could not see" in md and "activation statistics" in md
    assert capfd.readouterr().err.count("trainlens: warning: torch.compile") == 1


def test_model_compiled_inside_the_block_is_noticed(tmp_path):
    lens, _, _ = _train("inside", True, tmp_path / "run")
    rec = lens.records
    assert rec.meta["compile"]["how"] == "the model was compiled inside the block"
    assert len(rec.train_loss()) == STEPS and len(rec.steps) == STEPS
    assert rec.params["grad_norm"].gt(0).all()
    assert rec.activations.empty  # not seen inside compiled code, as the warning says


def test_uncompiled_run_carries_no_compile_warning(tmp_path):
    lens, _, _ = _train("none", True, tmp_path / "run")
    assert "compile" not in lens.records.meta
    assert not lens.records.activations.empty


def _scripted_run(run_dir, *, watched: bool, lr: float, script=torch.jit.script):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(256, 8, generator=g), torch.randn(8, 3, generator=g)
    y = (x @ w).argmax(1)
    model = script(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    block = (
        trainlens.watch(model, opt, run_dir=run_dir, quiet=True)
        if watched
        else contextlib.nullcontext()
    )
    with block as lens:
        for _ in range(8):
            for i in range(0, 256, 32):
                loss = nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}, lens


@pytest.mark.parametrize("how", ["script", "trace"])
def test_a_torchscript_model_trains_as_without_watch_and_the_drill_says_what_is_unseen(
    how, tmp_path, capfd
):
    script = (
        torch.jit.script if how == "script" else (lambda m: torch.jit.trace(m, torch.randn(2, 8)))
    )
    plain, _ = _scripted_run(None, watched=False, lr=0.1, script=script)
    watched, lens = _scripted_run(tmp_path / "run", watched=True, lr=0.1, script=script)
    assert all(torch.equal(plain[k], watched[k]) for k in plain)
    assert "probes_stopped" not in lens.drill
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]
    assert len(lens.records.train_loss()) == 64  # the functional loss outside the script
    # its call is a module call, its layers run where no module hook reaches
    assert set(lens.records.shapes["module"]) == {""}
    assert "TorchScript" in capfd.readouterr().err
    md = (tmp_path / "run" / "drill.md").read_text()
    assert "What trainlens could not see" in md and "TorchScript" in md


def test_a_torchscript_model_with_an_lr_far_too_low_is_still_lr_too_low(tmp_path):
    _, lens = _scripted_run(tmp_path / "run", watched=True, lr=1e-7)
    flat = [f for f in lens.findings if f.symptom == "flat_loss"]
    assert flat and flat[0].likely_cause == "lr_too_low", [f.summary() for f in lens.findings]
