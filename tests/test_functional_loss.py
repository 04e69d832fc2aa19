"""Losses written as functions (`F.cross_entropy`, `F.mse_loss`, ...) are losses too (issue 19 §1).

Each bug class of the catalogue that reads the loss is planted in a loop that computes its
loss with `torch.nn.functional`, and must be diagnosed as with the `nn` loss modules.
"""

from __future__ import annotations

import contextlib
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.functional import mse_loss  # bound before any block: rebound inside it

import trainlens
from models import classification_data, mlp, train
from trainlens._probes._functional_loss import LOSSES, functional_losses_patched

ORIGINALS = {name: getattr(F, name) for name in LOSSES}
ORIGINAL_BACKWARD = torch.autograd.backward
ORIGINAL_SCALE = torch.amp.GradScaler.scale


def drill_of(run_dir):
    return json.loads((run_dir / "drill.json").read_text())


def finding(run_dir, symptom):
    found = [f for f in drill_of(run_dir)["findings"] if f["symptom"] == symptom]
    assert len(found) == 1, drill_of(run_dir)["findings"]
    return found[0]


def cross_entropy(logits, y):
    return F.cross_entropy(logits, y)  # looked up at call time, as most loops do


# --- the catalogue's loss-dependent bug classes, with a functional loss ------------------
def test_a_loss_warning_shows_where_and_as_often_as_without_watch(run_dir):
    """`nn.MSELoss` calls `F.mse_loss`, wrapped during the block, and so does the user's own
    `F.mse_loss` call: torch's broadcasting warning (`stacklevel=2`) must name the same
    lines as without watch (MSELoss.forward in torch, the user's line), and under the
    default filter show once per line, not once per step."""

    def warned(watch: bool) -> list[tuple[str, int]]:
        model = nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(8, 3), torch.randn(8)
        lens = trainlens.watch(model, opt, run_dir=run_dir, quiet=True) if watch else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            with lens if lens is not None else contextlib.nullcontext():
                for _ in range(5):
                    loss = nn.MSELoss()(model(x), y) + F.mse_loss(model(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        return [(w.filename, w.lineno) for w in caught if "target size" in str(w.message)]

    plain = warned(watch=False)
    assert len(plain) == 2 and plain[0][0].endswith("loss.py") and plain[1][0] == __file__
    assert warned(watch=True) == plain


def test_softmax_before_f_cross_entropy_is_softmax_before_loss(run_dir):
    model = nn.Sequential(mlp(), nn.Softmax(dim=1))
    train(model, classification_data(n=256), steps=60, lr=1e-3, loss_fn=cross_entropy,
          run_dir=run_dir)  # fmt: skip
    f = finding(run_dir, "flat_loss")
    assert f["likely_cause"] == "softmax_before_loss"
    assert f["module"] == "1"
    assert "each row sums to 1" in f["likely_causes"][0]["evidence"]


def test_n_by_1_output_against_n_targets_in_f_mse_loss_is_a_silent_broadcast(run_dir):
    x = torch.randn(32, 8)
    y = x.sum(1)  # [N]; the model outputs [N, 1]
    model = mlp(d_out=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with pytest.warns(UserWarning, match="broadcasting") as warned:
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
            for _ in range(5):
                loss = F.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
    # torch's warning still points at the user's line, not at trainlens's wrapper
    assert {w.filename for w in warned if "broadcasting" in str(w.message)} == {__file__}
    f = finding(run_dir, "shape_mismatch")
    assert f["likely_cause"] == "loss_target_shape_mismatch"
    assert f["severity"] == "error" and f["module"] is None  # a function is no module
    ev = f["likely_causes"][0]["evidence"]
    assert "F.mse_loss got input [32, 1] and target [32]" in ev and "[32, 32]" in ev
    assert "output.squeeze(-1)" in f["fix_attempt"]


def test_labels_shuffled_apart_from_inputs_with_f_cross_entropy_are_label_mismatch(run_dir):
    x, y = classification_data(n=256, classes=3)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    train(mlp(), (x, y), steps=80, lr=1e-3, loss_fn=cross_entropy, run_dir=run_dir)
    f = finding(run_dir, "flat_loss")
    assert f["likely_cause"] == "label_mismatch", f["likely_causes"]
    assert "class-prior entropy" in f["likely_causes"][0]["evidence"]


def test_lr_10_with_f_cross_entropy_is_diverging_lr_too_high(run_dir):
    train(mlp(), classification_data(n=128), steps=60, lr=10.0, loss_fn=cross_entropy,
          run_dir=run_dir)  # fmt: skip
    f = finding(run_dir, "diverging")
    assert f["severity"] == "error" and f["likely_cause"] == "lr_too_high"


def test_a_functional_validation_loss_lets_overfitting_fire(run_dir):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1, generator=g)

    def data(n):
        x = torch.randn(n, 4, generator=g)
        return x, x @ w + 2.0 * torch.randn(n, 1, generator=g)

    (xt, yt), (xv, yv) = data(16), data(64)
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 1))  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for step in range(120):
            model.train()
            loss = F.mse_loss(model(xt), yt)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 10 == 9:
                model.eval()
                with torch.no_grad():
                    F.mse_loss(model(xv), yv)
    assert set(lens.records.losses["split"]) == {"train", "val"}
    f = finding(run_dir, "overfitting")
    assert f["likely_cause"] == "overfitting" and f["severity"] == "warning"


def test_f_nll_loss_on_probabilities_starts_below_zero(run_dir):
    model = nn.Sequential(mlp(), nn.Softmax(dim=1))
    train(model, classification_data(n=128), steps=20, lr=1e-3,
          loss_fn=lambda p, y: F.nll_loss(p, y), run_dir=run_dir)  # fmt: skip
    info = trainlens.load_run(run_dir).records.meta["initial_loss"]
    assert (info["loss"], info["kind"], info["classes"]) == ("NLLLoss", "multiclass", 3)
    assert info["value"] < 0


# --- nanoGPT: the loss is computed inside forward -----------------------------------------
class TinyGPT(nn.Module):
    """nanoGPT's shape of `forward`: returns `(logits, loss)`, loss only with targets."""

    def __init__(self, vocab=16, d=32, block=8, flatten_targets=True):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(),
                                 nn.Linear(4 * d, d))  # fmt: skip
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.flatten_targets = flatten_targets

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        logits = self.lm_head(x + self.mlp(x))
        if targets is None:
            return logits, None
        if self.flatten_targets:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1
            )
        else:  # the bug: [B, T, V] logits against [B, T] targets
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets, ignore_index=-1)
        return logits, loss


def gpt_batches(n=4, b=8, t=8, vocab=16):
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, vocab, (n * b * t + 1,), generator=g)
    for i in range(n):
        chunk = data[i * b * t : (i + 1) * b * t + 1]
        yield chunk[:-1].view(b, t), chunk[1:].view(b, t)


def test_a_nanogpt_forward_returning_logits_and_loss_is_seen(run_dir):
    model = TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for x, y in gpt_batches():
            _, loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            model(x, y)
            model(x)  # generation: no targets, no loss
    losses = lens.records.losses
    assert list(losses["source"].unique()) == ["F.cross_entropy"]
    assert list(losses["split"]) == ["train"] * 4 + ["val"]
    assert lens.records.meta["initial_loss"]["classes"] == 16
    assert not [f for f in lens.findings if f.severity == "error"]


def test_a_nanogpt_forward_with_unflattened_targets_gets_its_loss_shape_drill(run_dir):
    model = TinyGPT(flatten_targets=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="batch_size") as raised:
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
            for x, y in gpt_batches():
                model(x, y)
    assert "F.cross_entropy" not in str(raised.value)  # the user's error, unchanged
    f = finding(run_dir, "shape_mismatch")
    assert f["likely_cause"] == "loss_target_shape_mismatch"
    ev = f["likely_causes"][0]["evidence"]
    assert "[64, 16]" in ev and "[8, 8]" in ev
    assert "target.view(-1)" in f["fix_attempt"]
    assert drill_of(run_dir)["findings"][0]["symptom"] == "shape_mismatch"


# --- read-only, once, gone after the block -------------------------------------------------
class SmoothedCE(nn.modules.loss._Loss):
    """A user's loss module: calls F.cross_entropy inside its forward."""

    def forward(self, logits, y):
        return F.cross_entropy(logits, y, label_smoothing=0.1)


@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(), SmoothedCE()], ids=["nn", "subclass"])
def test_an_nn_loss_module_is_recorded_once_not_again_as_its_function(run_dir, loss_fn):
    lens = train(mlp(), classification_data(), steps=6, loss_fn=loss_fn, run_dir=run_dir)
    losses = lens.records.losses
    assert len(losses) == 6
    assert set(losses["source"]) == {type(loss_fn).__name__}


def _run(watch, run_dir=None):
    torch.manual_seed(0)
    model = TinyGPT()
    head = mlp(d_in=16, d_out=1)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    lens = trainlens.watch(model, opt, run_dir=run_dir, quiet=True) if watch else None
    if lens is not None:
        lens.__enter__()
    try:
        for x, y in gpt_batches(n=3):
            logits, loss = model(x, y)
            r = head(logits.detach().mean(1)).squeeze(-1)
            loss = loss + mse_loss(r, y.float().mean(1)) + F.huber_loss(r, y.float()[:, 0])
            loss = loss + F.binary_cross_entropy_with_logits(r, (y[:, 0] > 7).float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        if lens is not None:
            lens.__exit__(None, None, None)
    return [p.detach().clone() for p in params], lens


def test_watched_and_unwatched_functional_loss_runs_are_bit_identical(run_dir):
    plain, _ = _run(False)
    watched, lens = _run(True, run_dir)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))
    sources = lens.records.losses["source"].value_counts().to_dict()
    assert sources == {
        "F.cross_entropy": 3,
        "F.mse_loss": 3,
        "F.huber_loss": 3,
        "F.binary_cross_entropy_with_logits": 3,
    }


def test_the_functions_are_the_originals_again_after_the_block_also_after_a_crash(run_dir):
    assert not functional_losses_patched()
    with pytest.raises(ValueError):
        # TinyGPT's module is this one: its `from torch.nn.functional import mse_loss` is
        # rebound for the block (a model from another module would leave it alone)
        with trainlens.watch(TinyGPT(), run_dir=run_dir, quiet=True):
            assert functional_losses_patched()
            assert mse_loss is not ORIGINALS["mse_loss"]
            raise ValueError("user code")
    assert not functional_losses_patched()
    assert {n: getattr(F, n) for n in LOSSES} == ORIGINALS
    assert mse_loss is ORIGINALS["mse_loss"]


def test_nested_blocks_each_record_the_loss_and_restore_once(tmp_path):
    model = mlp()
    x, y = classification_data()
    with trainlens.watch(model, run_dir=tmp_path / "outer", quiet=True) as outer:
        with trainlens.watch(model, run_dir=tmp_path / "inner", quiet=True) as inner:
            F.cross_entropy(model(x), y).backward()
        assert functional_losses_patched()
        F.cross_entropy(model(x), y).backward()
    assert not functional_losses_patched()
    assert (len(inner.records.losses), len(outer.records.losses)) == (1, 2)


# --- no loss seen: say so, never "no problems found" --------------------------------------
def test_a_run_whose_loss_is_never_seen_gets_a_warning_that_shows_how_to_log_one(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = classification_data()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(5):
            logp = torch.log_softmax(model(x), dim=1)
            loss = -logp.gather(1, y[:, None]).mean()  # written by hand
            opt.zero_grad()
            # gradients by `autograd.grad`, no `backward()`: no root to read the loss from
            params = list(model.parameters())
            for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
                p.grad = g
            opt.step()
    drill = drill_of(run_dir)
    assert drill["status"] == "warning"
    f = finding(run_dir, "flat_loss")
    assert (f["severity"], f["likely_cause"]) == ("warning", "no_loss_recorded")
    assert "lens.log_loss(loss)" in f["fix_attempt"]
    assert "5 training steps" in f["first_check"]
    md = (run_dir / "drill.md").read_text()
    assert "No problems found" not in md
    assert lens.findings[0].likely_causes[0].id == "no_loss_recorded"


def test_a_hand_written_loss_is_read_from_the_root_of_its_backward(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = classification_data()
    seen = []
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(5):
            logp = torch.log_softmax(model(x), dim=1)
            loss = -logp.gather(1, y[:, None]).mean()  # written by hand
            seen.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert torch.autograd.backward is ORIGINAL_BACKWARD  # given back after the block
    losses = lens.records.losses
    assert list(losses["source"]) == ["backward()"] * 5
    assert list(losses["step"]) == [0, 1, 2, 3, 4] and set(losses["split"]) == {"train"}
    assert losses["value"].tolist() == pytest.approx(seen)
    assert drill_of(run_dir)["status"] == "healthy"


def test_a_backward_root_is_not_added_to_a_loss_module_seen_in_its_step(run_dir):
    # CrossEntropyLoss plus a hand-written penalty: the module's loss is the step's, once
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = classification_data()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(4):
            loss = nn.CrossEntropyLoss()(model(x), y)
            total = loss + 1e-4 * sum(p.square().sum() for p in model.parameters())
            opt.zero_grad()
            total.backward()
            opt.step()
    assert list(lens.records.losses["source"]) == ["CrossEntropyLoss"] * 4


def test_a_gradscaler_loss_is_recorded_before_scaling(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    x, y = classification_data()
    seen = []
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(3):
            logp = torch.log_softmax(model(x), dim=1)
            loss = -logp.gather(1, y[:, None]).mean()
            seen.append(loss.item())
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    assert torch.amp.GradScaler.scale is ORIGINAL_SCALE
    assert lens.records.losses["value"].tolist() == pytest.approx(seen)  # not x 65536


def test_the_backward_of_another_models_loss_is_not_the_watched_models_loss(run_dir):
    # a GAN watched from its generator: the discriminator's own passes never reach it
    torch.manual_seed(0)
    gen, disc = nn.Linear(4, 2), nn.Linear(2, 1)
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.01)
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.01)
    with trainlens.watch(gen, opt_g, run_dir=run_dir, quiet=True) as lens:
        for _ in range(3):
            fake = gen(torch.randn(8, 4))
            d_loss = disc(fake.detach()).mean() - disc(torch.randn(8, 2)).mean()
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            g_loss = -disc(fake).mean()
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
    assert len(lens.records.losses) == 3  # the generator's three, by hand


def test_the_same_run_with_lens_log_loss_is_clean(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = classification_data()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(5):
            logp = torch.log_softmax(model(x), dim=1)
            loss = -logp.gather(1, y[:, None]).mean()
            lens.log_loss(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert drill_of(run_dir)["status"] == "healthy"


def test_an_empty_block_or_a_crash_before_any_loss_is_not_a_missing_loss(tmp_path):
    with trainlens.watch(mlp(), run_dir=tmp_path / "empty", quiet=True) as lens:
        pass
    assert lens.drill["status"] == "healthy"
    with pytest.raises(RuntimeError):
        with trainlens.watch(mlp(), run_dir=tmp_path / "crash", quiet=True) as lens:
            mlp()(torch.randn(4, 8)).sum().backward()
            mlp(d_in=3)(torch.randn(4, 8))
    assert "no_loss_recorded" not in json.dumps(lens.drill)


def test_one_call_site_switching_reduction_records_every_loss_per_element(run_dir):
    # the stand-in module of a call site is reused: its arguments must follow each call
    def criterion(logits, targets, reduction):
        return F.cross_entropy(logits, targets, reduction=reduction)

    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    expected = []
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for step in range(6):
            reduction = "sum" if step % 2 else "mean"
            loss = criterion(model(x), y, reduction)
            expected.append(loss.item() / (len(y) if reduction == "sum" else 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    recorded = list(lens.records.train_loss())
    assert recorded == pytest.approx(expected, rel=1e-5)
