"""Issue 16 §2: trainlens never breaks the user's program.

A probe whose own code fails is switched off for the rest of the run, the drill names it,
and the user's loop ends with exactly the parameters it has without trainlens. Models of
every dtype and layout train under watch as they do without it. Two blocks in two
threads each record only their own run.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens
from trainlens._probes import (
    DEFAULT_PROBES,
    AttentionProbe,
    CheckpointProbe,
    FiniteProbe,
    InitialLossProbe,
    LossInputProbe,
    LossProbe,
    ModuleProbe,
    StepProbe,
    _batch_dependency,
    _clipping,
    _functional_loss,
    _grad_carry,
    _initial_loss,
    _loaders,
    _memory,
)
from trainlens._probes import _compile as _compile_probe
from trainlens._probes._qkgrad import AttentionQKGradProbe

# --- a small model with every kind of probe food: attention, a loss module, Adam ------


class TinyAttentionNet(nn.Module):
    def __init__(self, d: int = 8, classes: int = 3):
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.embed(x))
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head((h + a).mean(1))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(6, 5, 4, generator=g), torch.randint(0, 3, (6,), generator=g)


def _train(run_dir: Path | None, steps: int = 5) -> tuple[dict[str, torch.Tensor], Any]:
    torch.manual_seed(0)
    model = TinyAttentionNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    x, y = _data()
    # one batch of the whole data a step, through a loader: food for the loader probe
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))

    def loop() -> None:
        for _ in range(steps):
            (xb, yb), *_ = loader
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # food for the clipping probe
            opt.step()
            with torch.no_grad():  # a functional validation loss: food for that probe
                F.cross_entropy(model(x), y)

    lens = None
    if run_dir is None:
        loop()
    else:
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True, checkpoint=True) as lens:
            loop()
    return {k: v.clone() for k, v in model.state_dict().items()}, lens


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise TypeError("injected failure")


def _failing_reader(device: torch.device) -> tuple[str, Callable[[], int]]:
    return "cpu_heap", _boom


# (probe name, what to break): each target runs inside that probe's hook, patch or finish
INJECTIONS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "modules": lambda mp: mp.setattr(ModuleProbe, "_record_shapes", _boom),
    "losses": lambda mp: mp.setattr(LossProbe, "_log", _boom),
    "steps": lambda mp: mp.setattr(StepProbe, "_record", _boom),
    "attention": lambda mp: mp.setattr(AttentionProbe, "_wanted", _boom),
    "loss_inputs": lambda mp: mp.setattr(LossInputProbe, "_on_forward", _boom),
    "grad_carry": lambda mp: mp.setattr(_grad_carry.GradCarryProbe, "_shared_norm", _boom),
    "memory": lambda mp: mp.setattr(_memory, "step_reader", _failing_reader),
    "checkpoint": lambda mp: mp.setattr(CheckpointProbe, "_snapshot", _boom),
    "finite": lambda mp: mp.setattr(FiniteProbe, "_count", _boom),
    "compile": lambda mp: mp.setattr(_compile_probe, "compiled_wrapper", _boom),
    "batch_dependency": lambda mp: mp.setattr(_batch_dependency, "check_batch_dependency", _boom),
    "initial_loss": lambda mp: mp.setattr(_initial_loss, "describe_loss", _boom),
    "functional_losses": lambda mp: mp.setattr(_functional_loss, "_observe", _boom),
    "loaders": lambda mp: mp.setattr(_loaders, "_describe", _boom),
    "clipping": lambda mp: mp.setattr(_clipping.ClipProbe, "_keep_norm", _boom),
    "attention_qk_grad": lambda mp: mp.setattr(
        AttentionQKGradProbe, "_hook", lambda self, name, dim: _boom
    ),
}


def test_every_default_probe_has_a_failure_injected_below():
    assert {cls.name for cls in DEFAULT_PROBES} == set(INJECTIONS)


@pytest.mark.parametrize("probe", sorted(INJECTIONS))
def test_a_failing_probe_stops_alone_and_the_training_is_untouched(probe, tmp_path, monkeypatch):
    plain, _ = _train(None)
    INJECTIONS[probe](monkeypatch)
    watched, lens = _train(tmp_path / "run")

    for key in plain:
        assert torch.equal(plain[key], watched[key]), key
    drill = json.loads((tmp_path / "run" / "drill.json").read_text())
    stopped = drill["probes_stopped"]
    assert [s["probe"] for s in stopped] == [probe]
    assert "TypeError: injected failure" in stopped[0]["error"]
    assert isinstance(stopped[0]["step"], int)
    md = (tmp_path / "run" / "drill.md").read_text()
    assert f"probe `{probe}` stopped at step {stopped[0]['step']}" in md
    events = lens.records.events
    assert (events["kind"] == "probe_stopped").sum() == 1


class HandWrittenAttention(nn.Module):
    """nanoGPT-style causal self-attention through F.scaled_dot_product_attention."""

    def __init__(self, d: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(b, t, d))


def test_a_failing_listener_of_the_patched_sdpa_leaves_its_output_alone(tmp_path, monkeypatch):
    def run(watched: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), HandWrittenAttention(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(3, 5, 4), torch.randn(3, 5, 1)
        block = trainlens.watch(model, opt, run_dir=tmp_path / "run", quiet=True)
        with block if watched else contextlib.nullcontext():
            for _ in range(3):
                opt.zero_grad()
                nn.MSELoss()(model(x), y).backward()
                opt.step()
        return {k: v.clone() for k, v in model.state_dict().items()}

    plain = run(False)
    monkeypatch.setattr(AttentionProbe, "_wanted", _boom)
    watched = run(True)
    for key in plain:
        assert torch.equal(plain[key], watched[key]), key
    drill = json.loads((tmp_path / "run" / "drill.json").read_text())
    assert [s["probe"] for s in drill["probes_stopped"]] == ["attention"]
    assert drill["probes_stopped"][0]["where"] == "on_sdpa"


def test_a_failing_finish_stops_only_that_probe(tmp_path, monkeypatch):
    monkeypatch.setattr(InitialLossProbe, "finish", _boom)
    _, lens = _train(tmp_path / "run")
    stopped = lens.drill["probes_stopped"]
    assert [(s["probe"], s["where"]) for s in stopped] == [("initial_loss", "finish")]
    assert "memory" in lens.records.meta  # the other probes finished


def test_the_users_exception_passes_through_a_stopped_probe_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(ModuleProbe, "_record_shapes", _boom)
    model = TinyAttentionNet()
    x, y = _data()
    mine = ValueError("the user's own")
    with pytest.raises(ValueError) as raised:
        with trainlens.watch(model, run_dir=tmp_path / "run", quiet=True) as lens:
            nn.CrossEntropyLoss()(model(x), y).backward()
            raise mine
    assert raised.value is mine
    assert lens.drill["exception"]["type"] == "ValueError"
    assert lens.drill["probes_stopped"][0]["probe"] == "modules"


def test_no_hook_or_filter_survives_a_failing_finish(tmp_path, monkeypatch):
    import warnings

    from torch.nn.modules import module as M

    filters = list(warnings.filters)
    hooks = (len(M._global_forward_hooks), len(M._global_forward_pre_hooks))
    monkeypatch.setattr(ModuleProbe, "finish", _boom)
    _train(tmp_path / "run", steps=2)
    assert (len(M._global_forward_hooks), len(M._global_forward_pre_hooks)) == hooks
    assert warnings.filters == filters


# --- every dtype and layout ------------------------------------------------------------


def _loop(model: nn.Module, opt: Any, batch: Callable[[], torch.Tensor], steps: int = 4):
    for _ in range(steps):
        if isinstance(opt, torch.optim.LBFGS):  # LBFGS evaluates the closure itself
            opt.step(batch)
            continue
        opt.zero_grad()
        loss = batch()
        loss.backward()
        opt.step()


def _mlp(dtype: torch.dtype) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).to(dtype)


def _float_case(dtype: torch.dtype, opt_cls: Any = torch.optim.Adam):
    def make():
        model = _mlp(dtype)
        opt = opt_cls(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4, dtype=dtype), torch.randn(16, 1, dtype=dtype)
        return model, opt, lambda: nn.MSELoss()(model(x), y)

    return make


def _lbfgs_float64():
    model = _mlp(torch.float64)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=3)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    return model, opt, closure


def _complex():
    model = nn.Linear(4, 2, dtype=torch.complex64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(16, 4, dtype=torch.complex64)
    y = torch.randn(16, 2, dtype=torch.complex64)
    return model, opt, lambda: (model(x) - y).abs().pow(2).mean()


def _int_tokens():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(24, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randint(0, 10, (16, 3)), torch.randint(0, 3, (16,))
    return model, opt, lambda: nn.CrossEntropyLoss()(model(x), y)


class GCNLayer(nn.Module):
    """One graph convolution, `A @ (X W)` with a sparse normalised adjacency (Kipf & Welling)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(adj, self.lin(x))


def _gcn(layout: str):
    def make():
        model = GCNLayer(4, 3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        n = 10
        dense = torch.eye(n) + torch.diag(torch.ones(n - 1), 1) + torch.diag(torch.ones(n - 1), -1)
        dense = dense / dense.sum(1, keepdim=True)
        adj = dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()
        x, y = torch.randn(n, 4), torch.randint(0, 3, (n,))
        return model, opt, lambda: nn.CrossEntropyLoss()(model(adj, x), y)

    return make


def _nested():
    model = nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.nested.nested_tensor([torch.randn(3, 4), torch.randn(5, 4)], layout=torch.jagged)
    return model, opt, lambda: model(x).values().pow(2).mean()


class Tagged(torch.Tensor):
    """A tensor subclass that only carries a Python-side tag (as libraries do)."""


def _subclass():
    model = _mlp(torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 4).as_subclass(Tagged)
    y = torch.randn(16, 1).as_subclass(Tagged)
    return model, opt, lambda: nn.MSELoss()(model(x), y)


class Nest(nn.Module):
    def __init__(self, inner: nn.Module | None):
        super().__init__()
        self.inner = inner
        self.lin = nn.Linear(4, 4) if inner is None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) if self.inner is None else self.inner(x)


def _deep():
    model: nn.Module | None = None
    for _ in range(200):
        model = Nest(model)
    assert model is not None
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randn(8, 4)
    return model, opt, lambda: nn.MSELoss()(model(x), y)


CASES = {
    "float64-adam": _float_case(torch.float64),
    "float64-lbfgs": _lbfgs_float64,
    "bfloat16": _float_case(torch.bfloat16, torch.optim.SGD),
    "float16": _float_case(torch.float16, torch.optim.SGD),
    "complex64": _complex,
    "int-tokens": _int_tokens,
    "sparse-coo": _gcn("coo"),
    "sparse-csr": _gcn("csr"),
    "nested-jagged": _nested,
    "tensor-subclass": _subclass,
    "nested-200-modules": _deep,
}


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_dtype_and_layout_trains_identically_under_watch(case, tmp_path):
    results = []
    for watched in (False, True):
        torch.manual_seed(0)
        model, opt, batch = CASES[case]()
        if watched:
            with trainlens.watch(model, opt, run_dir=tmp_path / "run", quiet=True) as lens:
                _loop(model, opt, batch)
        else:
            _loop(model, opt, batch)
        results.append({k: v.clone() for k, v in model.state_dict().items()})
    plain, watched = results
    for key in plain:
        assert torch.equal(plain[key], watched[key]), key
    assert "probes_stopped" not in lens.drill, lens.drill.get("probes_stopped")
    # and no rule failed on what it recorded (a nested tensor's ragged dim is a name)
    assert not lens.drill.get("plugin_errors"), lens.drill.get("plugin_errors")
    assert lens.drill["steps"] == 4


def test_a_dry_run_on_the_meta_device_works_under_watch(tmp_path):
    model = _mlp(torch.float32).to("meta")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 4, device="meta"), torch.randn(16, 1, device="meta")
    with trainlens.watch(model, opt, run_dir=tmp_path / "run", quiet=True) as lens:
        _loop(model, opt, lambda: nn.MSELoss()(model(x), y))
    assert "probes_stopped" not in lens.drill
    assert lens.drill["steps"] == 4
    assert len(lens.records.shapes) > 0  # shapes are known on meta; values are not


def test_the_recursion_limit_is_given_back_after_a_deep_model(tmp_path):
    import sys

    before = sys.getrecursionlimit()
    model, opt, batch = _deep()
    with trainlens.watch(model, opt, run_dir=tmp_path / "run", quiet=True):
        assert sys.getrecursionlimit() > before
        _loop(model, opt, batch, steps=1)
    assert sys.getrecursionlimit() == before


# --- two blocks in two threads ------------------------------------------------------------


def test_two_blocks_in_two_threads_each_record_only_their_own_run(tmp_path):
    """Thread A's batch check (trainlens's own extra forward) runs while thread B trains
    its steps: B loses none of them, and neither block records the other's losses."""
    a_checking = threading.Event()
    b_done_while_a_checks = threading.Event()
    a_trained = threading.Event()  # B's block stays open until A has trained
    errors: list[BaseException] = []
    lenses: dict[str, Any] = {}

    class PausingNet(nn.Module):
        """Its second call (the batch check's extra pass) waits for thread B's steps."""

        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 2)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 2:
                a_checking.set()
                b_done_while_a_checks.wait(timeout=30)
            return self.lin(x)

    def run_a() -> None:
        try:
            torch.manual_seed(1)
            model = PausingNet()
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
            with trainlens.watch(model, opt, run_dir=tmp_path / "a", quiet=True) as lens:
                for _ in range(7):
                    opt.zero_grad()
                    nn.CrossEntropyLoss()(model(x), y).backward()
                    opt.step()
                a_trained.set()
            lenses["a"] = lens
        except BaseException as err:  # pragma: no cover - reported below
            a_trained.set()
            errors.append(err)

    def run_b() -> None:
        try:
            torch.manual_seed(2)
            model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            x, y = torch.randn(8, 3), torch.randn(8, 1)
            with trainlens.watch(model, opt, run_dir=tmp_path / "b", quiet=True) as lens:
                a_checking.wait(timeout=30)
                for _ in range(11):
                    opt.zero_grad()
                    nn.MSELoss()(model(x), y).backward()
                    opt.step()
                b_done_while_a_checks.set()
                a_trained.wait(timeout=30)  # A's losses are computed while this block runs
            lenses["b"] = lens
        except BaseException as err:  # pragma: no cover - reported below
            b_done_while_a_checks.set()
            errors.append(err)

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    a, b = lenses["a"], lenses["b"]
    assert a.records.meta["batch_dependency"]["checked"]  # the check did run in A
    assert (a.drill["steps"], b.drill["steps"]) == (7, 11)
    assert a.records.losses["source"].tolist() == ["CrossEntropyLoss"] * 7
    assert b.records.losses["source"].tolist() == ["MSELoss"] * 11
    assert sorted(set(b.records.steps["step"])) == list(range(11))
    for lens in (a, b):
        assert not any(f.symptom == "diverging" for f in lens.findings), lens.findings


def test_a_finding_that_rests_on_a_stopped_probes_records_is_no_confident_error(
    tmp_path, monkeypatch
):
    """The steps probe fails at its first sampled step: its step and parameter records end
    there while the losses go on. A flat loss over those losses must not become a
    confident diagnosis read from the missing steps ("the optimizer never stepped")."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 8, generator=g), torch.randint(0, 3, (256,), generator=g)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1e-7)  # a real flat loss: lr far too low

    def run(run_dir: Path) -> Any:
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
            for _ in range(8):
                for i in range(0, 256, 32):
                    opt.zero_grad()
                    F.cross_entropy(model(x[i : i + 32]), y[i : i + 32]).backward()
                    opt.step()
        return lens

    intact = run(tmp_path / "intact")
    assert [f.severity for f in intact.findings if f.symptom == "flat_loss"] == ["error"]

    monkeypatch.setattr(StepProbe, "_snapshot_grads", _boom)
    lens = run(tmp_path / "stopped")
    drill = json.loads((tmp_path / "stopped" / "drill.json").read_text())
    assert [(s["probe"], s["tables"]) for s in drill["probes_stopped"]] == [
        ("steps", ["steps", "params"])
    ]
    flat = [f for f in drill["findings"] if f["symptom"] == "flat_loss"]
    assert flat, "the flat loss itself is still seen"
    assert flat[0]["severity"] == "warning" and drill["status"] != "failed"
    assert all(c["confidence"] <= 0.5 for c in flat[0]["likely_causes"])
    assert "steps probe stopped at step 0" in flat[0]["likely_causes"][0]["evidence"]
    assert flat[0]["evidence"]["incomplete_records"] == [
        {"probe": "steps", "step": 0, "tables": ["params", "steps"]}
    ]
    assert [f.severity for f in lens.findings] == [f["severity"] for f in drill["findings"]]


# --- torch.func transforms: the model called on batched wrappers records nothing ----------
def _per_sample_grad_loop(run_dir: Path | None) -> tuple[dict[str, torch.Tensor], Any]:
    """Per-sample gradient norms with `vmap(grad(...))` over `functional_call` (as
    differential-privacy and data-attribution code computes them), next to the ordinary
    mean loss the step trains on."""
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 6, generator=g), torch.randint(0, 3, (96,), generator=g)

    def one(params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor):
        return F.cross_entropy(functional_call(model, params, (xi[None],)), yi[None])

    def loop() -> None:
        for _ in range(3):
            for i in range(0, 96, 16):
                params = {k: v.detach() for k, v in model.named_parameters()}
                per_sample = vmap(grad(one), in_dims=(None, 0, 0))(
                    params, x[i : i + 16], y[i : i + 16]
                )
                assert per_sample["0.weight"].shape == (16, 16, 6)
                loss = F.cross_entropy(model(x[i : i + 16]), y[i : i + 16])
                opt.zero_grad()
                loss.backward()
                opt.step()

    lens = None
    if run_dir is None:
        loop()
    else:
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
            loop()
    return {k: v.clone() for k, v in model.state_dict().items()}, lens


def test_per_sample_gradients_with_vmap_leave_every_probe_running(tmp_path):
    plain, _ = _per_sample_grad_loop(None)
    watched, lens = _per_sample_grad_loop(tmp_path / "run")
    for key in plain:
        assert torch.equal(plain[key], watched[key]), key
    drill = json.loads((tmp_path / "run" / "drill.json").read_text())
    assert drill.get("probes_stopped") in (None, []), drill.get("probes_stopped")
    assert drill["status"] == "healthy", drill["findings"]
    # the losses are the step's mean losses, not the vmapped per-sample ones
    assert len(lens.records.train_loss()) == 18
    assert (
        lens.records.shapes.loc[lens.records.shapes["module"] == "0", "inputs"]
        .str.contains(r"\[16, 6\]")
        .all()
    )


class _Unreadable(torch.Tensor):
    """A statistic that cannot be read back to the host (as a batched wrapper could not)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.to, torch.Tensor.tolist, torch.Tensor.item, torch.stack):
            raise RuntimeError("cannot be read back")
        return super().__torch_function__(func, types, args, kwargs or {})


def test_one_unreadable_statistic_costs_its_own_row_not_the_drill(tmp_path, monkeypatch):
    original = LossProbe._log

    def log_and_add_a_bad_value(self, loss, split, source):
        original(self, loss, split, source)
        bad = torch.zeros(3).as_subclass(_Unreadable)
        self.state.deferred.add_row(self.state.tables["activations"], ("x",), bad)

    monkeypatch.setattr(LossProbe, "_log", log_and_add_a_bad_value)
    plain, _ = _train(None)
    with pytest.warns(RuntimeWarning, match="some sampled statistics"):
        watched, lens = _train(tmp_path / "run")
    for key in plain:
        assert torch.equal(plain[key], watched[key]), key
    drill = json.loads((tmp_path / "run" / "drill.json").read_text())
    assert drill["steps"] == 5
    assert drill.get("probes_stopped") in (None, []), drill.get("probes_stopped")
    assert len(lens.records.train_loss()) == 5  # the other statistics all came back
    assert not lens.records.params.empty


def test_a_sink_that_raises_at_the_read_back_loses_its_rows_and_no_other_is_written_twice():
    from trainlens._records import Deferred, Table

    class BrokenSink:  # a probe's row sink with a bug of its own
        def append(self, *row):
            raise ValueError("sink bug")

    deferred, table = Deferred(), Table(("step", "a", "b"), policy=None)
    deferred.add_row(table, (0,), torch.tensor([1.0, 2.0]))
    deferred.add_row(BrokenSink(), (0,), torch.tensor([3.0, 4.0]))
    deferred.add_row(table, (1,), torch.tensor([5.0, 6.0]))
    deferred.flush()  # never raises
    assert table.frame().values.tolist() == [[0, 1.0, 2.0], [1, 5.0, 6.0]]
    assert deferred.errors == ["ValueError: sink bug"]


def test_a_failure_reading_backward_roots_leaves_the_other_losses_recorded(tmp_path, monkeypatch):
    from trainlens._probes import _backward_loss

    monkeypatch.setattr(_backward_loss, "current_root", _boom)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    with trainlens.watch(model, opt, run_dir=tmp_path / "run", quiet=True) as lens:
        for _ in range(4):
            loss = -torch.log_softmax(model(x), 1).gather(1, y[:, None]).mean()  # by hand
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                F.cross_entropy(model(x), y)  # a functional validation loss
    assert not lens.records.meta.get("probes_stopped")
    assert list(lens.records.losses["split"]) == ["val"] * 4  # still seen
    assert "backward_root_off" in set(lens.records.events["kind"])
