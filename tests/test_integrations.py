"""Lightning and Hugging Face callbacks: one line gives the same records, rules and drill."""

from __future__ import annotations

import importlib
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
    x, y = classification_data(n=128)
    xv, yv = classification_data(n=32, seed=1)
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
    # GPT-2's loss is functional (inside forward): logged from the model output's .loss,
    # once per forward
    assert set(rec.losses["source"]) == {"log_loss"}
    assert rec.losses[rec.losses["split"] == "train"].groupby("step").size().eq(1).all()
    # evaluation inside training is "val": eval mode, no grad
    val = rec.losses[rec.losses["split"] == "val"]
    assert len(val) == 2 * 2 and set(val["step"]) == {4, 8}
    # the same numbers the Trainer reports: its training loss is the mean over steps
    assert train.mean() == pytest.approx(result.training_loss, rel=1e-4)
    params = rec.params
    assert "transformer.h.0.attn.c_attn.weight" in set(params["param"])
    assert params.loc[params["param"] == "transformer.wte.weight", "grad_norm"].gt(0).all()
    # hooks are gone after training: evaluating now records nothing more
    n = len(rec.losses)
    trainer.evaluate()
    assert len(callback.lens.records.losses) == n
    assert (lens.run_dir / "drill.md").is_file()
