"""Quiet calls: on an unsampled step, a call of the model whose shapes and modes were seen
before runs without the per-module hooks (issue 20). Nothing a user sees may change: the
losses of every step, the shapes of a new batch, the module a crash is placed at."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules import module as torch_module

import trainlens

#: steps the default schedule leaves unsampled (steps 0-9 are sampled, then 10, 12, ...)
UNSAMPLED = (11, 13, 21, 25, 27)


def global_hooks() -> int:
    return len(torch_module._global_forward_pre_hooks) + len(torch_module._global_forward_hooks)


def assert_every_step_has_its_named_loss(lens, steps: int) -> None:
    losses = lens.records.losses
    train_losses = losses[losses["split"] == "train"]
    assert list(train_losses["step"]) == list(range(steps))
    assert set(train_losses["source"]) == {"CrossEntropyLoss"}
    assert lens.drill["status"] == "healthy"


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def train(model, run_dir, steps=30, batch=lambda step: 16, on_step=None, watch=True):
    torch.manual_seed(1)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    lens = trainlens.watch(model, opt, run_dir=run_dir, quiet=True) if watch else None
    with lens if lens is not None else torch.enable_grad():
        for step in range(steps):
            n = batch(step)
            loss = loss_fn(model(x[:n]), y[:n])
            if on_step is not None:
                on_step(step)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return lens


def test_an_unsampled_call_with_seen_shapes_runs_without_global_hooks_and_loses_nothing(tmp_path):
    before = global_hooks()
    seen: dict[int, int] = {}
    watched = mlp()
    lens = train(watched, tmp_path / "run", on_step=lambda s: seen.__setitem__(s, global_hooks()))
    plain = mlp()
    train(plain, None, watch=False)
    # sampled steps (and the first call of the run) are dispatched in full, the others not
    assert seen[0] == seen[10] == before + 2
    assert all(seen[s] == before for s in UNSAMPLED), seen
    assert global_hooks() == before
    # nothing the user sees changes: the model trains as without watch, every step's loss
    # is recorded by its loss module, and the run is healthy
    pairs = zip(watched.parameters(), plain.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert_every_step_has_its_named_loss(lens, 30)


def test_a_new_batch_size_on_an_unsampled_step_has_its_shapes_traced(tmp_path):
    lens = train(mlp(), tmp_path / "run", batch=lambda step: 5 if step == 21 else 16)
    shapes = lens.records.shapes
    late = shapes[shapes["step"] == 21]
    # every module, not only the model's own call
    assert set(late["module"]) == {"", "0", "1", "2", "3", "4"}
    assert all(row.startswith("[[5,") for row in late["inputs"])


def test_a_crash_inside_a_quiet_call_is_placed_at_the_module_that_raised(tmp_path):
    """A token id past the vocabulary at step 25, in a batch of the shape seen since step
    0: the call is quiet, and the drill still names the embedding, the ids it got and
    the shapes on the way to it (from the calls that traced them)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Identity(), nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    ids, y = torch.arange(12).reshape(4, 3) % 10, torch.zeros(4, dtype=torch.long)
    lens = trainlens.watch(model, opt, run_dir=tmp_path / "run", quiet=True)
    with pytest.raises(IndexError), lens:
        for step in range(30):
            batch = ids.clone()
            if step == 25:
                batch[1, 2] = 12
            loss = loss_fn(model(batch), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    (finding,) = [f for f in lens.findings if f.symptom == "shape_mismatch"]
    assert finding.module == "1"
    assert "num_embeddings=10" in finding.top.evidence and "[0, 12]" in finding.top.evidence
    assert [t["module"] for t in finding.evidence["trail"]] == ["(model)", "0"]


def test_a_module_of_the_model_called_on_its_own_keeps_every_call_dispatched(tmp_path):
    """An encoder-decoder driven piece by piece: the model's own call would not see its
    parts, so no call is quiet and every part's shapes are traced."""

    class EncoderDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
            self.decoder = nn.Linear(16, 3)

        def forward(self, x):
            return self.decoder(self.encoder(x))

    torch.manual_seed(0)
    model = EncoderDecoder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    before = global_hooks()
    seen = {}
    with trainlens.watch(model, opt, run_dir=tmp_path / "run", quiet=True) as lens:
        for step in range(30):
            n = 3 if step == 22 else 8  # step 22 is not sampled
            out = model(x) if step % 2 else model.decoder(model.encoder(x[:n]))
            loss = nn.functional.cross_entropy(out, y[: len(out)])
            seen[step] = global_hooks()
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert all(seen[s] == before + 2 for s in UNSAMPLED), seen
    assert 3 in set(lens.records.shapes.query("module == 'decoder'")["batch"])


def test_loss_modules_made_anew_every_step_keep_every_loss_recorded(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    with trainlens.watch(model, opt, run_dir=tmp_path / "run", quiet=True) as lens:
        for _ in range(40):
            loss = nn.CrossEntropyLoss()(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert_every_step_has_its_named_loss(lens, 40)


def test_every_validation_batch_keeps_its_loss_when_its_calls_are_quiet(tmp_path):
    """A validation pass after each epoch, most of them on unsampled steps: its calls are
    quiet after the first, and the validation curve still has every batch."""
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = nn.CrossEntropyLoss()
    # seven steps an epoch: the passes after steps 21, 35 and 42 are on unsampled steps
    x, y = torch.randn(224, 8), torch.randint(0, 3, (224,))
    xv, yv = torch.randn(96, 8), torch.randint(0, 3, (96,))
    quiet_val_calls = 0
    with trainlens.watch(model, opt, run_dir=tmp_path / "run", quiet=True) as lens:
        for _ in range(6):
            model.train()
            for i in range(0, 224, 32):
                loss = criterion(model(x[i : i + 32]), y[i : i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                for i in range(0, 96, 32):
                    criterion(model(xv[i : i + 32]), yv[i : i + 32])
                    quiet_val_calls += lens._state.forwards.quiet
    losses = lens.records.losses
    assert quiet_val_calls > 0
    assert len(losses[losses["split"] == "val"]) == 18
    assert len(losses[losses["split"] == "train"]) == 42
    # the hooks the loss module and the model were given went with the block
    assert not criterion._forward_hooks
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_model_that_is_never_quiet_puts_no_hook_on_its_loss_module(tmp_path):
    """A leaf model (the course's `nn.Linear`) is dispatched by the global hooks on every
    call: its loss module needs no hook of its own, which would be one more call a step."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.MSELoss()
    x = torch.linspace(-1, 1, 16).unsqueeze(1)
    own_hooks = []
    with trainlens.watch(model, opt, run_dir=tmp_path / "run", quiet=True) as lens:
        for _ in range(30):
            loss = loss_fn(model(x), 2 * x)
            own_hooks.append(len(loss_fn._forward_hooks))
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert own_hooks == [0] * 30
    losses = lens.records.losses
    assert list(losses["step"]) == list(range(30))
    assert set(losses["source"]) == {"MSELoss"}
    assert lens.drill["status"] == "healthy"


def test_subscriptions_for_sampled_steps_run_on_those_alone_and_go_with_their_handle(tmp_path):
    """The shared dispatch keeps the every-step subscriptions apart from those of sampled
    steps (an unsampled step walks only the first): each kind is called on its steps, for
    the model, the loss and the first gradient, until its handle is removed (the model's
    inner modules are left out of quiet calls altogether: see the first test)."""
    from trainlens._probes import Probe
    from trainlens._probes._base import remove_all

    calls: dict[str, list[int]] = {}
    model = mlp()
    torch.manual_seed(1)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    with trainlens.watch(model, opt, run_dir=tmp_path / "run", quiet=True) as lens:
        state = lens._state
        probes = {kind: Probe(state) for kind in ("every", "sampled")}

        def note(name: str):
            def fn(*args) -> None:
                calls.setdefault(name, []).append(state.step)

            return fn

        for kind, probe in probes.items():
            sampled = kind == "sampled"
            state.forwards.pre(probe, {model: note(f"{kind} pre")}, sampled=sampled)
            state.forwards.post(probe, {model: note(f"{kind} post")}, sampled=sampled)
            state.forwards.loss(probe, note(f"{kind} loss"), sampled=sampled)
            state.backwards.first_grad(probe, note(f"{kind} grad"), sampled=sampled)
        for step in range(30):
            if step == 20:
                remove_all(probes["every"].handles)
                remove_all(probes["sampled"].handles)
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    sampled_steps = [s for s in range(20) if state.sampling(s)]
    assert len(sampled_steps) < 20  # the default schedule leaves some of them out
    for where in ("pre", "post", "loss", "grad"):
        assert calls[f"every {where}"] == list(range(20)), where
        assert calls[f"sampled {where}"] == sampled_steps, where


def test_a_call_from_another_thread_inside_a_quiet_call_is_dispatched_in_full(tmp_path):
    """A second thread calls the model while the training thread's call is quiet (a layer
    that hands work to a thread): its modules are hooked again, with their new shapes,
    and no later call is quiet."""
    import threading

    calls_in_thread: list[torch.Tensor] = []

    class HandOff(nn.Module):
        """At one step, has another thread run the whole model on a batch of 5."""

        armed = False

        def forward(self, x):
            if HandOff.armed:
                HandOff.armed = False
                batch = torch.randn(5, 8)
                worker = threading.Thread(target=lambda: calls_in_thread.append(model(batch)))
                worker.start()
                worker.join()
            return x

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), HandOff(), nn.ReLU(), nn.Linear(16, 3))
    before = global_hooks()
    seen = {}

    def on_step(step):
        seen[step] = global_hooks()
        HandOff.armed = step == 20  # the forward of step 21, a quiet one, hands off

    lens = train(model, tmp_path / "run", on_step=on_step)
    assert seen[13] == before and len(calls_in_thread) == 1
    shapes = lens.records.shapes
    handed = shapes[shapes["step"] == 21]
    assert {"0", "3"} <= set(handed["module"]), handed  # not only the model's own call
    assert all(row.startswith("[[5,") for row in handed["inputs"])
    assert all(seen[s] == before + 2 for s in (25, 27)), seen
