"""Lightning and Hugging Face callbacks: one line gives the same records, rules and drill."""

from __future__ import annotations

import importlib
import math
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models import classification_data


def test_integrations_import_without_frameworks_and_say_what_to_install(monkeypatch):
    import trainlens.integrations  # noqa: F401  (needs neither framework)

    for extra, modules in {
        "lightning": ("lightning", "lightning.pytorch", "lightning.pytorch.callbacks",
                      "pytorch_lightning", "pytorch_lightning.callbacks"),
        "transformers": ("transformers",),
    }.items():  # fmt: skip
        for name in modules:
            monkeypatch.setitem(sys.modules, name, None)  # import of it raises ImportError
        monkeypatch.delitem(sys.modules, f"trainlens.integrations.{extra}", raising=False)
        with pytest.raises(ImportError, match=rf"pip install trainlens\[{extra}\]"):
            importlib.import_module(f"trainlens.integrations.{extra}")


# --- Lightning -----------------------------------------------------------------------
def _lightning_module(functional: bool, fail_at: int | None = None, broadcast: bool = False):
    pl = pytest.importorskip("lightning.pytorch")

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
            self.loss_fn = nn.CrossEntropyLoss()

        def _loss(self, batch):
            x, y = batch
            out = self.net(x)
            if broadcast:  # [N, 1] predictions against [N] targets
                return nn.functional.mse_loss(out[:, :1], y.float()) if functional else (
                    nn.MSELoss()(out[:, :1], y.float()))  # fmt: skip
            if functional:
                return nn.functional.cross_entropy(out, y)
            return self.loss_fn(out, y)

        def training_step(self, batch, batch_idx):
            if fail_at is not None and self.global_step == fail_at:
                raise RuntimeError("planted failure in training_step")
            return self._loss(batch)

        def validation_step(self, batch, batch_idx):
            return self._loss(batch)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    return pl, Classifier()


def _fit(tmp_path, module_args, epochs=3, **trainer_kw):
    from trainlens.integrations.lightning import TrainlensCallback

    pl, module = _lightning_module(**module_args)
    x, y = classification_data(n=160)  # one draw: the same labelling rule for both
    x, y, xv, yv = x[:128], y[:128], x[128:], y[128:]
    callback = TrainlensCallback(run_dir=tmp_path / "run", quiet=True)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path, callbacks=[callback], **trainer_kw,
    )  # fmt: skip
    train = DataLoader(TensorDataset(x, y), batch_size=16)
    val = DataLoader(TensorDataset(xv, yv), batch_size=16)
    return trainer, callback, lambda: trainer.fit(module, train, val)


@pytest.mark.parametrize("functional", [False, True], ids=["loss-module", "functional-loss"])
def test_lightning_callback_records_a_healthy_fit(tmp_path, functional):
    trainer, callback, fit = _fit(tmp_path, {"functional": functional})
    fit()
    lens = callback.lens
    assert lens.drill["status"] == "healthy"
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]
    rec = lens.records
    assert rec.meta["steps"] == trainer.global_step == 3 * 8
    train = rec.train_loss()
    assert len(train) == 24 and train.index.tolist() == list(range(24))
    assert train.iloc[-3:].mean() < 0.7 * train.iloc[:3].mean()
    assert len(rec.val_loss()) == 3  # two val batches per epoch, averaged on their step
    # gradients are those of the step's own closure, named as in the LightningModule
    params = rec.params
    assert {"net.0.weight", "net.2.bias"} <= set(params["param"])
    assert params["has_grad"].all() and params["grad_norm"].gt(0).all()
    assert (lens.run_dir / "drill.md").is_file()


def test_lightning_accumulation_counts_optimizer_steps(tmp_path):
    trainer, callback, fit = _fit(tmp_path, {"functional": True}, epochs=2,
                                  accumulate_grad_batches=4)  # fmt: skip
    fit()
    rec = callback.lens.records
    assert rec.meta["steps"] == trainer.global_step == 2 * 2
    assert rec.steps["backward_passes"].eq(4).all()
    assert callback.lens.drill["findings"] == []


def test_lightning_callback_diagnoses_a_planted_bug(tmp_path):
    _, callback, fit = _fit(tmp_path, {"functional": False, "broadcast": True}, epochs=1)
    with pytest.warns(UserWarning, match="target size"):
        fit()
    assert callback.lens.findings[0].likely_cause == "loss_target_shape_mismatch"


def test_lightning_exception_still_writes_the_drill(tmp_path):
    _, callback, fit = _fit(tmp_path, {"functional": False, "fail_at": 3})
    with pytest.raises(RuntimeError, match="planted failure"):
        fit()
    lens = callback.lens
    assert lens.drill["status"] == "failed"
    assert lens.drill["exception"]["type"] == "RuntimeError"
    assert lens.records.meta["steps"] == 3
    assert (lens.run_dir / "drill.json").is_file()


# --- Hugging Face --------------------------------------------------------------------
def _hf_trainer(tmp_path, steps=8):
    transformers = pytest.importorskip("transformers")
    from trainlens.integrations.transformers import TrainlensCallback

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=2
    )  # 2 layers, hidden 32: built from the config, nothing downloaded
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, 40, (64, 1), generator=g)
    ids = (starts + torch.arange(12)) % 40  # a counting pattern the LM can learn
    data = [{"input_ids": row, "attention_mask": torch.ones(12, dtype=torch.long),
             "labels": row} for row in ids]  # fmt: skip
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=steps, per_device_train_batch_size=8,
        per_device_eval_batch_size=16, learning_rate=1e-3, report_to=[], use_cpu=True,
        save_strategy="no", logging_steps=100, disable_tqdm=True, seed=0,
        eval_strategy="steps", eval_steps=4,
    )  # fmt: skip
    callback = TrainlensCallback(run_dir=tmp_path / "run", quiet=True)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=data, eval_dataset=data[:32], callbacks=[callback]
    )
    return trainer, callback


def test_transformers_callback_records_the_models_own_loss(tmp_path):
    trainer, callback = _hf_trainer(tmp_path)
    result = trainer.train()
    lens = callback.lens
    rec = lens.records
    assert lens.drill["status"] == "healthy"
    assert lens.drill["findings"] == [], [f.summary() for f in lens.findings]
    assert rec.meta["steps"] == trainer.state.global_step == 8
    train = rec.train_loss()
    assert len(train) == 8
    # GPT-2's loss is functional (F.cross_entropy inside forward): captured as such, and
    # not again from the model output's .loss
    assert set(rec.losses["source"]) == {"F.cross_entropy"}
    assert rec.losses[rec.losses["split"] == "train"].groupby("step").size().eq(1).all()
    # evaluation inside training is "val": eval mode, no grad
    val = rec.losses[rec.losses["split"] == "val"]
    assert len(val) == 2 * 2 and set(val["step"]) == {4, 8}
    # GPT-2 sums its token losses in training and divides by the Trainer's token count;
    # trainlens records the per-token mean (the sum over the tokens it was taken over), so
    # train and val (mean-reduced in evaluate) are on one scale, near ln(40) at the start
    assert abs(train.iloc[0] - math.log(40)) < 0.5
    assert train.mean() == pytest.approx(result.training_loss, rel=0.15)
    params = rec.params
    assert "transformer.h.0.attn.c_attn.weight" in set(params["param"])
    assert params.loc[params["param"] == "transformer.wte.weight", "grad_norm"].gt(0).all()
    # hooks are gone after training: evaluating now records nothing more
    n = len(rec.losses)
    trainer.evaluate()
    assert len(callback.lens.records.losses) == n
    assert (lens.run_dir / "drill.md").is_file()


# --- Lightning without holes (issue 19 §2) ---------------------------------------------
def test_lightning_shape_bug_in_the_sanity_check_gets_its_drill(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from trainlens.integrations.lightning import TrainlensCallback

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    x, y = classification_data(n=64)
    xv = torch.randn(32, 6)  # the bug: validation features lost two columns
    yv = torch.randint(0, 3, (32,))
    callback = TrainlensCallback(run_dir=tmp_path / "run", quiet=True)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[callback],
    )  # fmt: skip  (the default num_sanity_val_steps=2: the crash is in the sanity check)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        trainer.fit(
            Classifier(),
            DataLoader(TensorDataset(x, y), batch_size=16),
            DataLoader(TensorDataset(xv, yv), batch_size=16),
        )
    drill = callback.lens.drill
    assert drill["status"] == "failed" and drill["steps"] == 0
    f = drill["findings"][0]
    assert (f["symptom"], f["likely_cause"], f["module"]) == (
        "shape_mismatch",
        "layer_input_mismatch",
        "net.0",
    )
    assert "[16, 6]" in f["likely_causes"][0]["evidence"]
    assert (tmp_path / "run" / "drill.json").is_file()


def _regression(n, g, w):
    x = torch.randn(n, 4, generator=g)
    return x, x @ w + 2.0 * torch.randn(n, 1, generator=g)


def test_lightning_logged_val_loss_lets_overfitting_fire_and_the_headline_reaches_the_logger(
    tmp_path,
):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger

    from trainlens.integrations.lightning import TrainlensCallback

    class Regressor(pl.LightningModule):
        """A wide MLP on 16 noisy samples; the validation loss is written by hand and only
        logged (`self.log`), never returned: no loss hook sees it."""

        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                     nn.Linear(64, 1))  # fmt: skip

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", ((self.net(x) - y) ** 2).mean())

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=3e-3)

    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1, generator=g)
    (xt, yt), (xv, yv) = _regression(16, g, w), _regression(64, g, w)
    callback = TrainlensCallback(quiet=True)  # run dir: under the logger's folder
    logger = CSVLogger(tmp_path, name="logs")
    trainer = pl.Trainer(
        max_epochs=120, check_val_every_n_epoch=10, accelerator="cpu", devices=1,
        logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=50,
        callbacks=[callback],
    )  # fmt: skip
    trainer.fit(
        Regressor(),
        DataLoader(TensorDataset(xt, yt), batch_size=16),
        DataLoader(TensorDataset(xv, yv), batch_size=64),
    )
    lens = callback.lens
    assert lens.run_dir.parent == (tmp_path / "logs" / "version_0" / "trainlens").resolve()
    val = lens.records.val_loss()
    assert len(val) == 12
    symptoms = {f.symptom: f for f in lens.findings}
    assert symptoms["overfitting"].likely_cause == "overfitting", [
        f.summary() for f in lens.findings
    ]
    hparams = (tmp_path / "logs" / "version_0" / "hparams.yaml").read_text()
    assert "trainlens/status: warning" in hparams
    assert "trainlens/symptom: overfitting" in hparams and "trainlens/cause: overfitting" in hparams


# --- Hugging Face without holes (issue 19 §2) ------------------------------------------
class _CrashingRegressor(nn.Module):
    """A plain nn.Module under HF's Trainer: returns {"loss", "logits"}; crashes at a call."""

    def __init__(self, crash_at=None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        self.calls = 0
        self.crash_at = crash_at

    def forward(self, x, labels=None):
        self.calls += 1
        if self.calls == self.crash_at:
            x = x[:, :6]  # the planted shape bug, on the 4th batch
        out = self.net(x)
        loss = None if labels is None else nn.functional.mse_loss(out.squeeze(-1), labels)
        return {"loss": loss, "logits": out}


def _hf_plain(tmp_path, crash_at=None, **kw):
    transformers = pytest.importorskip("transformers")
    from trainlens.integrations.transformers import TrainlensCallback

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    data = [{"x": row, "labels": row.sum()} for row in x]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=8,
        learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no",
        logging_steps=100, seed=0, remove_unused_columns=False,
        disable_tqdm=kw.pop("disable_tqdm", True),
    )  # fmt: skip
    callback = TrainlensCallback(**kw)
    trainer = transformers.Trainer(
        model=_CrashingRegressor(crash_at), args=args, train_dataset=data, callbacks=[callback]
    )
    return trainer, callback


def test_hf_crash_inside_train_writes_the_drill_when_it_leaves_train(tmp_path):
    trainer, callback = _hf_plain(tmp_path, crash_at=4, quiet=True)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as raised:
        trainer.train()
    lens = callback.lens
    assert lens.drill is not None, "the drill waits for the interpreter to exit"
    assert lens.drill["exception"]["type"] == "RuntimeError"
    assert lens.drill["steps"] == trainer.state.global_step > 0
    f = lens.drill["findings"][0]
    assert (f["likely_cause"], f["module"]) == ("layer_input_mismatch", "net.0")
    # default run dir: under the Trainer's output_dir
    assert lens.run_dir.parent == (tmp_path / "out" / "trainlens").resolve()
    assert (lens.run_dir / "drill.json").is_file()
    assert type(raised.value) is RuntimeError  # the user's exception, unchanged
    assert set(lens.records.losses["source"]) == {"F.mse_loss"}  # seen in forward, once


def test_hf_summary_line_starts_after_the_progress_bar(tmp_path, capfd):
    trainer, callback = _hf_plain(tmp_path, disable_tqdm=False)
    trainer.train()
    err = capfd.readouterr().err
    assert "trainlens: run" in err
    line = next(ln for ln in err.replace("\r", "\n").splitlines() if "trainlens: run" in ln)
    assert line.startswith("trainlens: run"), repr(line)
    assert callback.lens.drill["status"] == "healthy", callback.lens.drill["findings"]


def test_hf_callback_added_later_prints_its_summary_above_the_bar(tmp_path, capfd):
    pytest.importorskip("transformers")
    from trainlens.integrations.transformers import TrainlensCallback

    trainer, first = _hf_plain(tmp_path, disable_tqdm=False, quiet=True)
    trainer.remove_callback(first)
    callback = TrainlensCallback()  # added after the Trainer was built: no train() wrapper
    trainer.add_callback(callback)
    trainer.train()
    err = capfd.readouterr().err
    line = next(ln for ln in err.replace("\r", "\n").splitlines() if "trainlens: run" in ln)
    assert line.startswith("trainlens: run"), repr(line)
    assert callback.lens.drill is not None
