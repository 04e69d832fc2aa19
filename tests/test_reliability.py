"""SPEC §6: recording never changes the numbers, hooks never outlive the block, odd models
work, and every mistake a user can make is caught at entry with what to do."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
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
from trainlens import _io


def _hook_counts(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> dict[str, int]:
    from torch.nn.modules import module as M

    counts = {
        "global_forward": len(M._global_forward_hooks),
        "global_pre": len(M._global_forward_pre_hooks),
        "global_always": len(M._global_forward_hooks_always_called),
        "module_forward": sum(len(m._forward_hooks) for m in model.modules()),
        "module_pre": sum(len(m._forward_pre_hooks) for m in model.modules()),
        "param": sum(len(p._backward_hooks or {}) for p in model.parameters()),
    }
    if opt is not None:
        counts["opt_pre"] = len(opt._optimizer_step_pre_hooks)
        counts["opt_post"] = len(opt._optimizer_step_post_hooks)
    return counts


@pytest.mark.parametrize(
    ("make_model", "data", "lr"),
    [(SmallCNN, image_data(), 1e-2), (TinyTransformer, token_data(), 1e-3)],
    ids=["cnn", "transformer"],
)
def test_watched_and_unwatched_runs_give_bit_identical_parameters(make_model, data, lr, tmp_path):
    results = []
    for watched in (False, True):
        torch.manual_seed(1)  # same init, same dropout masks
        model = make_model()
        train(model, data, steps=12, lr=lr, val=data, watch=watched, run_dir=tmp_path / "r")
        results.append({k: v.clone() for k, v in model.state_dict().items()})
    plain, watched = results
    assert plain.keys() == watched.keys()
    for key in plain:
        assert torch.equal(plain[key], watched[key]), key  # running stats of BatchNorm too


def test_no_hook_outlives_a_normal_block(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _hook_counts(model, opt)
    x, y = classification_data()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
        assert _hook_counts(model, opt) != before
        loss = nn.CrossEntropyLoss()(model(x), y)
        loss.backward()
        opt.step()
    assert _hook_counts(model, opt) == before


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_no_hook_outlives_a_block_that_raises(exc_type, run_dir):
    class Stop(nn.Module):
        def forward(self, x):
            raise exc_type("stop here")  # as if Ctrl-C hit in the middle of a forward

    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), Stop()))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _hook_counts(model, opt)
    with pytest.raises(exc_type, match="stop here"):
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
            model(torch.randn(2, 4))
    assert _hook_counts(model, opt) == before
    drill = trainlens.load_run(run_dir).drill  # the drill was still written
    assert drill["exception"]["type"] == exc_type.__name__
    assert drill["exception"]["module"] == "1.1"
    assert drill["status"] == ("healthy" if exc_type is KeyboardInterrupt else "failed")


def test_a_caught_exception_does_not_confuse_later_steps(run_dir):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        try:
            model(torch.randn(3, 5))  # wrong width: raises inside layer 0
        except RuntimeError:
            pass
        for _ in range(3):
            loss = nn.CrossEntropyLoss()(model(torch.randn(3, 4)), torch.zeros(3, dtype=torch.long))
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert lens.drill["status"] == "healthy" and lens.drill["steps"] == 3
    assert lens.records.shapes.query("module == '2'")["call"].iloc[0] == 4  # counted afresh


def test_inplace_activations_are_recorded_without_changing_them(run_dir):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Linear(16, 3))
    lens = train(model, classification_data(), steps=5, run_dir=run_dir)
    relu = lens.records.activations.query("module == '1'")
    assert len(relu) == 5 and relu["zero_frac"].between(0.05, 0.95).all()
    assert lens.findings == []


def test_tied_weights_are_counted_once(run_dir):
    class TiedLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 16)
            self.out = nn.Linear(16, 20, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, ids):
            return self.out(self.embed(ids))[:, -1]  # predict from the last token

    ids = torch.randint(0, 20, (8, 6))
    lens = train(TiedLM(), (ids, ids[:, 0]), steps=4, batch=8, run_dir=run_dir)
    assert sorted(lens.records.meta["params"]) == ["embed.weight"]
    assert set(lens.records.params["param"]) == {"embed.weight"}
    assert len(lens.records.params) == 4


def test_lazy_layers_are_tracked_once_they_have_parameters(run_dir):
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.LazyLinear(3))
    lens = train(model, classification_data(), steps=3, run_dir=run_dir)
    assert set(lens.records.params["param"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert lens.records.meta["params"]["0.weight"]["shape"] == [16, 8]
    # their gradient hooks came after the first forward: every step saw its backward pass
    assert list(lens.records.steps["backward_passes"]) == [1, 1, 1]


def test_a_model_without_parameters_works(run_dir):
    model = nn.Sequential(nn.ReLU(), nn.Softmax(dim=-1))
    with trainlens.watch(model, run_dir=run_dir, quiet=True) as lens:
        out = model(torch.randn(4, 3))
        nn.MSELoss()(out, torch.full((4, 3), 1 / 3))
    assert lens.drill["status"] == "healthy" and lens.drill["steps"] == 0
    assert len(lens.records.losses) == 1 and len(lens.records.shapes) == 3


def test_a_frozen_model_works(run_dir):
    model = mlp()
    model.requires_grad_(False)
    x, y = classification_data()
    with trainlens.watch(model, run_dir=run_dir, quiet=True) as lens:
        for _ in range(3):
            nn.CrossEntropyLoss()(model(x), y)
    assert lens.drill["status"] == "healthy"
    assert lens.records.params.empty and len(lens.records.losses) == 3
    assert not any(p["requires_grad"] for p in lens.records.meta["params"].values())


def test_nested_watch_blocks_on_one_model_each_write_their_drill(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = classification_data()
    with trainlens.watch(model, opt, run_dir=tmp_path / "outer", quiet=True) as outer:
        for i in range(4):
            if i == 2:
                with trainlens.watch(model, opt, run_dir=tmp_path / "inner", quiet=True) as inner:
                    loss = nn.CrossEntropyLoss()(model(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                continue
            loss = nn.CrossEntropyLoss()(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert (outer.drill["steps"], inner.drill["steps"]) == (4, 1)
    assert len(outer.records.losses) == 4 and len(inner.records.losses) == 1


def test_nested_watch_blocks_cannot_share_a_run_dir(run_dir):
    model = mlp()
    with trainlens.watch(model, run_dir=run_dir, quiet=True):
        with pytest.raises(trainlens.UsageError, match="give the inner block its own run_dir"):
            with trainlens.watch(model, run_dir=run_dir, quiet=True):
                pass


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda: "not a model", "needs a torch.nn.Module as its first argument, got str"),
        (
            lambda: torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1),
            "the optimizer goes second",
        ),
    ],
)
def test_watching_something_that_is_not_a_module_fails_at_once(bad, message):
    with pytest.raises(trainlens.UsageError, match=message):
        trainlens.watch(bad())


def test_a_bad_optimizer_or_sampling_fails_at_once():
    with pytest.raises(trainlens.UsageError, match=r"optimizer must be a torch\.optim\.Optimizer"):
        trainlens.watch(nn.Linear(1, 1), "sgd")

    class HandWrittenSGD:  # the way a course notebook writes one
        def __init__(self, params, lr):
            self.params, self.lr = list(params), lr

        def step(self):
            pass

    model = nn.Linear(1, 1)
    with pytest.raises(trainlens.UsageError, match="by hand: pass optimizer=None"):
        trainlens.watch(model, HandWrittenSGD(model.parameters(), 0.1))
    two = [torch.optim.SGD(model.parameters(), lr=0.1)] * 2
    with pytest.raises(trainlens.UsageError, match="one optimizer per watch"):
        trainlens.watch(model, two)
    with pytest.raises(trainlens.UsageError, match="sample_every must be a positive integer"):
        trainlens.watch(nn.Linear(1, 1), sample_every=0)


def test_unwritable_run_dir_fails_before_any_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    trained = []
    with pytest.raises(trainlens.RunDirError, match="cannot write to run_dir"):
        with trainlens.watch(nn.Linear(1, 1), run_dir=blocker / "run", quiet=True):
            trained.append(True)
    assert trained == []


def test_default_run_dir_is_under_trainlens_runs_with_a_sortable_id(tmp_path):
    with trainlens.watch(nn.Linear(1, 1), quiet=True) as lens:
        pass
    assert lens.run_dir == tmp_path / "trainlens-runs" / lens.run_id
    date, time_, suffix = lens.run_id.split("-")
    assert len(date) == 8 and len(time_) == 6 and len(suffix) == 4


def test_a_crash_while_writing_leaves_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "drill.json"
    target.write_text('{"old": true}')

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        _io.atomic_write_text(target, '{"new": true}')
    assert target.read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["drill.json"]


def test_run_files_get_normal_permissions(run_dir):
    train(mlp(), classification_data(), steps=2, run_dir=run_dir)
    mask = os.umask(0)
    os.umask(mask)
    assert (run_dir / "drill.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_load_run_says_what_is_wrong_with_a_run_dir(tmp_path):
    with pytest.raises(trainlens.RunDirError, match="does not exist"):
        trainlens.load_run(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(trainlens.RunDirError, match=r"no drill\.json"):
        trainlens.load_run(empty)
    (empty / "drill.json").write_text('{"run_id": "x", "sta')
    with pytest.raises(trainlens.RunDirError, match="corrupt"):
        trainlens.load_run(empty)
    (empty / "drill.json").write_text(
        '{"schema_version": 99, "run_id": "x", "status": "healthy", "findings": []}'
    )
    with pytest.raises(trainlens.RunDirError, match="upgrade trainlens"):
        trainlens.load_run(empty)


def test_package_schema_is_no_looser_than_the_shared_contract():
    import json

    shared = Path(__file__).resolve().parents[2] / "shared" / "drill.schema.json"
    if not shared.exists():
        pytest.skip("shared/ is not beside this checkout")
    from trainlens._resources import schema_path

    ours, theirs = json.loads(schema_path().read_text()), json.loads(shared.read_text())
    assert set(theirs["required"]) <= set(ours["required"])
    f_ours = ours["properties"]["findings"]["items"]
    f_theirs = theirs["properties"]["findings"]["items"]
    assert set(f_theirs["required"]) <= set(f_ours["required"])
    for key in ("symptom", "severity"):
        assert set(f_ours["properties"][key]["enum"]) <= set(f_theirs["properties"][key]["enum"])
    assert ours["properties"]["status"] == theirs["properties"]["status"]


class _NoDetach(torch.Tensor):
    """A weight type whose `detach()` raises once armed (a wrapper of a library's own)."""

    armed = False

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.detach and cls.armed:
            raise RuntimeError("this tensor type cannot be detached")
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_weight_the_end_of_run_checks_cannot_read_costs_those_checks_not_the_drill(
    run_dir, monkeypatch
):
    model = nn.Linear(4, 2)
    model.weight = nn.Parameter(model.weight.detach().as_subclass(_NoDetach))
    monkeypatch.setattr(_NoDetach, "armed", True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "could not write the drill" would fail the test
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
            for _ in range(5):
                loss = nn.functional.mse_loss(model(torch.randn(8, 4)), torch.zeros(8, 2))
                opt.zero_grad()
                loss.backward()
                opt.step()
    assert (run_dir / "drill.json").exists()
    assert lens.records.meta["identical_rows"] == {}  # the one check it could not make
