"""overfitting: validation parting from a still-falling train loss is named with its best
step; validation that never tracked the train loss is a bad split. Runs without
validation, and noisy validation curves, stay silent."""

from __future__ import annotations

import torch
from torch import nn

import trainlens


def regression(n, d, noise, g, w, shift=0.0):
    x = torch.randn(n, d, generator=g)
    return x, x @ w + noise * torch.randn(n, 1, generator=g) + shift


def fit(run_dir, train, val, *, steps=120, lr=3e-3, width=64, every=10):
    """A wide MLP trained full-batch, evaluated in eval mode under no_grad."""
    model = nn.Sequential(
        nn.Linear(train[0].shape[1], width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, 1),
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.MSELoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for step in range(steps):
            model.train()
            loss = loss_fn(model(train[0]), train[1])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if val is not None and step % every == every - 1:
                model.eval()
                with torch.no_grad():
                    loss_fn(model(val[0]), val[1])
    return lens


def finding(run_dir):
    drill = trainlens.load_run(run_dir).drill
    found = [f for f in drill["findings"] if f["symptom"] == "overfitting"]
    assert len(found) == 1, drill["findings"]
    return found[0]


def test_wide_mlp_on_16_noisy_samples_overfits_with_its_best_step(run_dir):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1, generator=g)
    lens = fit(run_dir, regression(16, 4, 2.0, g, w), regression(64, 4, 2.0, g, w))
    f = finding(run_dir)
    assert (f["severity"], f["likely_cause"]) == ("warning", "overfitting")
    val = lens.records.val_loss()
    best_step = int(val.idxmin())
    assert f["step"] == best_step and best_step > int(val.index[0])
    ev = f["likely_causes"][0]["evidence"]
    assert f"at step {best_step}" in ev and "train loss fell" in ev
    assert f"step {best_step}" in f["fix_attempt"]  # keep that checkpoint
    assert lens.drill["status"] == "warning"  # a warning, not a failed run


def test_memorising_noisy_labels_until_validation_triples_is_an_error(run_dir):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1, generator=g)
    train = regression(16, 4, 2.0, g, w)  # noisy training labels ...
    val = regression(64, 4, 0.0, g, w)  # ... clean validation labels
    lens = fit(run_dir, train, val)
    f = finding(run_dir)
    assert (f["severity"], f["likely_cause"]) == ("error", "overfitting")
    assert lens.drill["status"] == "failed"
    val_loss = lens.records.val_loss()
    assert val_loss.iloc[-2:].mean() >= 3 * val_loss.min()


def test_validation_from_another_distribution_is_a_bad_split(run_dir):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1, generator=g)
    train = regression(64, 4, 0.1, g, w)
    val = regression(64, 4, 0.1, g, w, shift=3.0)  # e.g. targets in other units
    lens = fit(run_dir, train, val, steps=80, lr=1e-2)
    f = finding(run_dir)
    assert f["likely_cause"] == "bad_split"
    assert f["step"] == int(lens.records.val_loss().index[0])
    assert "first evaluation" in f["likely_causes"][0]["evidence"]
    assert "random_split" in f["fix_attempt"]


def test_validation_worse_from_its_first_evaluation_names_both_readings(run_dir):
    # the scaler applied to the training features only: validation starts close to the
    # train loss (both models of nothing yet), then drifts off as the model fits
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1, generator=g)
    train = regression(256, 4, 0.1, g, w)
    x_val, y_val = regression(64, 4, 0.1, g, w)
    lens = fit(run_dir, train, (x_val * 4 + 1, y_val), steps=80, lr=3e-3)
    val = lens.records.val_loss()
    assert val.idxmin() == val.index[0] and val.iloc[-1] > 10 * val.iloc[0]
    f = finding(run_dir)
    assert f["severity"] == "warning"  # two readings, neither sure
    assert [c["id"] for c in f["likely_causes"]] == ["bad_split", "overfitting"]
    assert "never improved" in f["likely_causes"][0]["evidence"]
    assert "x_train.mean(0)" in f["first_check"]
    assert "best at its first evaluation" in f["likely_causes"][1]["evidence"]


def test_a_run_without_validation_is_clean(run_dir):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1, generator=g)
    lens = fit(run_dir, regression(16, 4, 2.0, g, w), None)
    assert "overfitting" not in {f.symptom for f in lens.findings}


def test_noisy_small_validation_set_that_tracks_training_is_clean(run_dir):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1, generator=g)
    lens = fit(run_dir, regression(128, 4, 0.3, g, w), regression(8, 4, 0.3, g, w),
               steps=100, lr=1e-2, width=32, every=5)  # fmt: skip
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]


# --- a model left in eval mode after its first validation ---------------------------------
def epochs_with_validation(run_dir, model, *, train_each_epoch, eval_from_start=False):
    """Classification by epochs of 8 batches, validated after each: `model.train()` at
    the start of every epoch, or (the bug) only once before the loop."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(640, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(1)
    (xt, yt), (xv, yv) = (x[:512], y[:512]), (x[512:], y[512:])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        model.eval() if eval_from_start else model.train()
        for _ in range(8):
            if train_each_epoch:
                model.train()
            for i in range(0, 512, 64):
                loss = loss_fn(model(xt[i : i + 64]), yt[i : i + 64])
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                loss_fn(model(xv), yv)
            if eval_from_start:
                model.eval()
    return lens


def _regularised():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 4)
    )


def test_model_train_missing_after_validation_is_train_mode_missing(run_dir):
    lens = epochs_with_validation(run_dir, _regularised(), train_each_epoch=False)
    f = finding(run_dir)
    assert (f["severity"], f["likely_cause"], f["step"]) == ("error", "train_mode_missing", 8)
    ev = f["likely_causes"][0]["evidence"]
    assert "56 of 64 backward passes came from a forward with the model in eval mode" in ev
    assert "from step 8 on (after 8 in train mode)" in ev
    assert "BatchNorm1d, Dropout" in ev
    assert lens.records.meta["backward_modes"]["train_before"] == 8
    # the losses it trained on after step 8 are filed under "val", as the SPEC splits them
    assert (lens.records.losses.query("split == 'val'")["step"] >= 8).all()


def test_without_dropout_or_batch_norm_it_is_a_warning_about_the_curves(run_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    epochs_with_validation(run_dir, model, train_each_epoch=False)
    f = finding(run_dir)
    assert (f["severity"], f["likely_cause"]) == ("warning", "train_mode_missing")
    assert "only the curves are mixed up" in f["likely_causes"][0]["evidence"]


def test_train_mode_at_every_epoch_and_eval_mode_throughout_are_clean(run_dir, tmp_path):
    lens = epochs_with_validation(run_dir, _regularised(), train_each_epoch=True)
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]
    assert lens.records.meta["backward_modes"]["eval"] == 0
    # trained in eval mode from the first step on (frozen batch-norm statistics, on
    # purpose or not): no train-then-eval switch to point at
    lens = epochs_with_validation(
        tmp_path / "frozen", _regularised(), train_each_epoch=False, eval_from_start=True
    )
    assert [f for f in lens.findings if f.likely_cause == "train_mode_missing"] == []


def test_an_evaluation_between_forward_and_backward_is_not_eval_mode_training(run_dir):
    """The loss is made in train mode; a no-grad evaluation runs before its backward pass
    (logging code between `loss = ...` and `loss.backward()`): the mode that counts is the
    one the loss was computed in."""
    model = _regularised()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 16, generator=g), torch.randint(0, 4, (256,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for epoch in range(4):
            for i in range(0, 256, 32):
                model.train()
                loss = nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
                if epoch > 0:  # a running validation metric, logged mid-step
                    model.eval()
                    with torch.no_grad():
                        nn.functional.cross_entropy(model(x[:64]), y[:64])
                opt.zero_grad()
                loss.backward()
                opt.step()
    modes = lens.records.meta["backward_modes"]
    assert (modes["train"], modes["eval"]) == (32, 0)
    assert [f for f in lens.findings if f.likely_cause == "train_mode_missing"] == []


# --- a likelihood below zero: rises measured against how far training moved the loss -------
class MeanAndVariance(nn.Module):
    """Heteroscedastic regression: a mean and a variance head, trained with
    GaussianNLLLoss, whose loss goes below zero once the predicted variance is small."""

    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh()
        )
        self.mu, self.log_var = nn.Linear(width, 1), nn.Linear(width, 1)

    def forward(self, x):
        h = self.body(x)
        return self.mu(h), self.log_var(h).exp()


def gaussian_regression(run_dir, n_train, noise, epochs, width):
    torch.manual_seed(0)
    x = torch.rand(n_train, 1) * 4 - 2
    y = torch.sin(2 * x) + noise * torch.randn_like(x)
    xv = torch.rand(256, 1) * 4 - 2
    yv = torch.sin(2 * xv) + noise * torch.randn_like(xv)
    model, criterion = MeanAndVariance(width), nn.GaussianNLLLoss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = min(64, n_train)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(epochs):
            model.train()
            for i in range(0, n_train, batch):
                mu, var = model(x[i : i + batch])
                loss = criterion(mu, y[i : i + batch], var)
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                mu, var = model(xv)
                criterion(mu, yv, var)
    return lens


def test_a_healthy_likelihood_below_zero_is_not_overfitting(run_dir):
    # validation wanders around its best (-2.46, -2.3, -2.44 ...) by a few percent of the
    # loss itself: 1.5x below a negative best read as "rose, inf x" before
    lens = gaussian_regression(run_dir, n_train=1024, noise=0.05, epochs=40, width=64)
    assert lens.records.val_loss().max() < 0
    assert lens.findings == [], lens.drill["findings"]


def test_a_likelihood_below_zero_that_overfits_is_found(run_dir):
    lens = gaussian_regression(run_dir, n_train=32, noise=0.3, epochs=400, width=256)
    f = next(f for f in lens.findings if f.symptom == "overfitting")
    assert f.likely_cause == "overfitting"
    assert "of the" in f.top.evidence and "the train loss fell over the run" in f.top.evidence
    assert lens.records.train_loss().min() < 0


# --- same_batch_every_step: `next(iter(loader))` inside the step loop -------------------
def loader_fit(run_dir, loader, val, *, steps=60, next_iter=True):
    """The wide MLP trained one batch a step from `loader`: each step takes
    `next(iter(loader))` (a fresh pass), or the batches of one pass after another."""
    model = nn.Sequential(
        nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.MSELoss()
    batches = iter(())
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for step in range(steps):
            model.train()
            if next_iter:
                xb, yb = next(iter(loader))
            else:
                xb, yb = next(batches, (None, None))
                if xb is None:
                    batches = iter(loader)
                    xb, yb = next(batches)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 10 == 9:
                model.eval()
                with torch.no_grad():
                    loss_fn(model(val[0]), val[1])
    return lens


def test_a_fresh_iterator_over_an_unshuffled_loader_every_step_is_the_same_batch(run_dir):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1, generator=g)
    train, val = regression(256, 4, 2.0, g, w), regression(64, 4, 2.0, g, w)
    loader = DataLoader(TensorDataset(*train), batch_size=16)
    lens = loader_fit(run_dir, loader, val, steps=150)
    (entry,) = lens.records.meta["loaders"]
    assert (entry["batches"], entry["sampler"]) == (16, "SequentialSampler")
    assert entry["steps_started"] == entry["iterators"] == 150
    f = finding(run_dir)
    assert (f["severity"], f["likely_cause"]) == ("error", "same_batch_every_step")
    top = f["likely_causes"][0]
    assert "started on 150 of 150 optimizer steps" in top["evidence"]
    assert "16 of about 256 samples" in top["evidence"]
    assert all(c["confidence"] <= 0.3 for c in f["likely_causes"][1:])
    assert "next(iter(train_loader))" in f["first_check"]
    # the patch is gone with the block
    assert DataLoader.__iter__ is vars(DataLoader)["__iter__"]
    assert DataLoader.__iter__.__module__ == "torch.utils.data.dataloader"


def test_the_same_loop_over_passes_of_the_loader_is_not_the_same_batch(run_dir):
    """The same data and model, the batches of each pass in turn: whatever the curves say,
    the loader is not to blame (one iterator per pass of 16 batches)."""
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1, generator=g)
    train, val = regression(256, 4, 2.0, g, w), regression(64, 4, 2.0, g, w)
    loader = DataLoader(TensorDataset(*train), batch_size=16)
    lens = loader_fit(run_dir, loader, val, next_iter=False)
    (entry,) = lens.records.meta["loaders"]
    assert entry["steps_started"] == 4  # one pass every 16 steps
    causes = {c.cause for f in lens.findings for c in f.causes}
    assert "same_batch_every_step" not in causes


def test_a_full_batch_loader_started_every_step_is_not_the_same_batch(run_dir):
    """A loader of one batch (the whole training set) gives the same batch every step by
    design: overfitting stays what the curves say."""
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1, generator=g)
    train, val = regression(16, 4, 2.0, g, w), regression(64, 4, 2.0, g, w)
    loader = DataLoader(TensorDataset(*train), batch_size=16)
    lens = loader_fit(run_dir, loader, val, steps=120)
    assert lens.records.meta["loaders"][0]["batches"] == 1
    f = finding(run_dir)
    assert f["likely_cause"] == "overfitting"
    assert "same_batch_every_step" not in {c["id"] for c in f["likely_causes"]}


def test_an_iterator_that_raises_passes_through_and_the_loader_is_restored(run_dir):
    """The patched `DataLoader.__iter__` hands the user's own dataset error through
    unchanged and is removed when the block ends on it."""
    import pytest
    from torch.utils.data import DataLoader, Dataset

    class Broken(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise KeyError(f"sample {i} is missing")

    model = nn.Linear(4, 1)
    original = vars(DataLoader)["__iter__"]
    with pytest.raises(KeyError, match="sample 0 is missing"):
        with trainlens.watch(
            model, torch.optim.SGD(model.parameters(), lr=0.1), run_dir=run_dir, quiet=True
        ):
            assert vars(DataLoader)["__iter__"] is not original
            next(iter(DataLoader(Broken(), batch_size=2)))
    assert vars(DataLoader)["__iter__"] is original
