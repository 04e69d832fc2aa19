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


# --- batches sorted by class -------------------------------------------------------------
def _sorted_data(n=1024, classes=4):
    """A classification set stored class by class, as an `ImageFolder` lists its files."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 20, generator=g)
    y = (x @ torch.randn(20, classes, generator=g)).argmax(1)
    order = y.argsort(stable=True)
    return x[order], y[order]


def _sorted_fit(run_dir, *, loader=None, slices=False, epochs=4, classes=4, sgd=False):
    """Adam (or slow SGD) on the sorted set, batches of 64 from `loader` or (`slices`) in
    stored order."""
    x, y = _sorted_data(classes=classes)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, classes))
    params = model.parameters()
    opt = torch.optim.SGD(params, lr=0.01) if sgd else torch.optim.Adam(params, lr=1e-3)
    ce = nn.CrossEntropyLoss()
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)] if slices else loader
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(epochs):
            for xb, yb in batches:
                loss = ce(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
    return lens


def _loader(**kwargs):
    x, y = _sorted_data()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), **kwargs)


def test_a_loader_without_shuffle_over_data_sorted_by_class_is_named(run_dir):
    """Each batch of 64 holds one class of four (two at a change of class): the loss probe
    counts each batch's classes, and the loader probe says the sampler reads in order."""
    lens = _sorted_fit(run_dir, loader=_loader(batch_size=64))
    f = finding(run_dir)
    assert (f["symptom"], f["severity"], f["likely_cause"]) == (
        "overfitting",
        "warning",
        "batches_sorted_by_class",
    )
    ev = f["likely_causes"][0]["evidence"]
    assert "a training batch of 64 targets" in ev and "(median 0;" in ev
    assert "`SequentialSampler`: `shuffle=False`" in ev
    assert "shuffle=True" in f["fix_attempt"]
    li = lens.records.loss_inputs
    counted = li[li["batch_entropy"].notna() & (li["split"] == "train")]
    assert (counted["batch_targets"] == 64).all()
    assert (counted["batch_entropy"] == 0).mean() >= 0.75


def test_slicing_sorted_tensors_in_order_is_named_too(run_dir):
    _sorted_fit(run_dir, slices=True)
    f = finding(run_dir)
    assert f["likely_cause"] == "batches_sorted_by_class"
    assert "the loop slices the data in its stored order" in f["likely_causes"][0]["evidence"]


def test_the_same_sorted_data_shuffled_by_the_loader_is_clean(run_dir):
    g = torch.Generator().manual_seed(0)
    lens = _sorted_fit(run_dir, loader=_loader(batch_size=64, shuffle=True, generator=g))
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]


class _TwoClassBatches(torch.utils.data.Sampler):
    """A batch sampler of the user's own that puts two classes in each batch on purpose
    (as metric learning's P x K samplers do)."""

    def __init__(self, y):
        self.by_class = [torch.nonzero(y == c).flatten() for c in range(4)]

    def __iter__(self):
        for step in range(16):
            a, b = self.by_class[step % 4], self.by_class[(step + 1) % 4]
            yield torch.cat([a[:32], b[:32]]).tolist()

    def __len__(self):
        return 16


def test_batches_a_batch_sampler_builds_on_purpose_are_not_this(run_dir):
    """Two-class batches from a batch sampler of the user's own, beside a validation
    loader that reads in order, run first each epoch (after `model.eval()`): the training
    loader is the one started in train mode, and it builds its batches on purpose."""
    _, y = _sorted_data()
    train = _loader(batch_sampler=_TwoClassBatches(y))
    val = _loader(batch_size=256)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(4):
            model.eval()
            with torch.no_grad():
                for xb, yb in val:
                    nn.functional.cross_entropy(model(xb), yb)
            model.train()
            for xb, yb in train:
                loss = nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
    loaders = {e["batch_sampler"]: e for e in lens.records.meta["loaders"]}
    assert loaders["_TwoClassBatches"]["train_iterators"] == 4
    assert loaders["BatchSampler"]["train_iterators"] == 0
    causes = {c.id for f in lens.findings for c in f.likely_causes}
    assert "batches_sorted_by_class" not in causes


def test_a_loss_flat_at_the_class_prior_from_sorted_batches_is_not_called_label_mismatch(
    run_dir,
):
    """Slow SGD over ten classes in stored order sits near the class prior: the targets
    are fine, the batches are not. No conclusion by elimination says the targets carry
    nothing the inputs explain."""
    lens = _sorted_fit(run_dir, slices=True, epochs=8, classes=10, sgd=True)
    causes = {c.id for f in lens.findings for c in f.likely_causes}
    assert "batches_sorted_by_class" in causes
    assert not causes & {"label_mismatch", "unknown"}, [f.summary() for f in lens.findings]
