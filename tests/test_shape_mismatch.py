"""shape_mismatch: a crash names the layer, what it expects and what it got; a silent
broadcast in the loss is an error even though training ran on."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainlens
from models import train
from trainlens._demo import load_example

PACKAGE_DIR = Path(trainlens.__file__).parent


def crash(model, x, y, loss_fn, run_dir, steps=2):
    """Train under watch until the model raises; return (lens, the exception seen)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1) if list(model.parameters()) else None
    lens = trainlens.watch(model, opt, run_dir=run_dir, quiet=True)
    with pytest.raises(BaseException) as info:
        with lens:
            for _ in range(steps):
                loss = loss_fn(model(x), y)
                loss.backward()
                if opt:
                    opt.step()
                    opt.zero_grad()
    return lens, info.value


def only(lens, symptom="shape_mismatch"):
    found = [f for f in lens.findings if f.symptom == symptom]
    assert len(found) == 1, lens.drill["findings"]
    return found[0]


def test_wrong_in_features_names_the_linear_and_both_sizes(run_dir):
    lens = load_example("shape_mismatch.py").main(run_dir=run_dir)
    f = only(lens)
    assert (f.severity, f.likely_cause, f.module, f.step) == (
        "error", "layer_input_mismatch", "classifier.1", 0,
    )  # fmt: skip
    assert "in_features=1024" in f.top.evidence and "[32, 784]" in f.top.evidence
    assert "nn.Linear(784, 10)" in f.fix_attempt
    assert f.evidence["path"] == ["(model)", "classifier", "classifier.1"]
    assert f.evidence["trail"][-1]["module"] == "classifier.0"  # the Flatten that fed it
    assert f.evidence["trail"][-1]["outputs"] == [[32, 784]]
    assert lens.drill["status"] == "failed"
    assert lens.drill["exception"]["type"] == "RuntimeError"


def test_the_original_exception_reaches_the_user_unchanged(run_dir):
    boom = ValueError("my own bug")

    class Faulty(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(2, 2)

        def forward(self, x):
            self.inner(x)
            raise boom

    model = Faulty()
    try:
        with trainlens.watch(model, run_dir=run_dir, quiet=True):
            model(torch.randn(3, 2))
    except ValueError as err:
        seen = err
    assert seen is boom
    frames = traceback.extract_tb(seen.__traceback__)
    assert frames[-1].name == "forward" and frames[-1].line == "raise boom"
    assert not any(Path(fr.filename).is_relative_to(PACKAGE_DIR) for fr in frames)
    # not a shape problem: no shape finding, but the drill records the crash
    drill = trainlens.load_run(run_dir).drill
    assert drill["findings"] == []
    assert drill["status"] == "failed"
    assert drill["exception"]["module"] == "" and drill["exception"]["type"] == "ValueError"


def test_channels_last_images_are_named_at_the_conv(run_dir):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(4, 16, 16, 3)  # NHWC, as images come from PIL/numpy
    lens, err = crash(model, x, torch.zeros(4, dtype=torch.long), nn.CrossEntropyLoss(), run_dir)
    assert isinstance(err, RuntimeError)
    f = only(lens)
    assert f.module == "0" and f.likely_cause == "layer_input_mismatch"
    assert "in_channels=3" in f.top.evidence and "[4, 16, 16, 3]" in f.top.evidence
    assert "permute(0, 3, 1, 2)" in f.fix_attempt


def test_token_id_beyond_the_vocabulary_is_named_at_the_embedding(run_dir):
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2))
    ids = torch.tensor([[1, 2, 3], [4, 5, 12]])
    lens, err = crash(model, ids, torch.zeros(2, dtype=torch.long), nn.CrossEntropyLoss(), run_dir)
    assert isinstance(err, IndexError)
    f = only(lens)
    assert f.module == "0"
    assert "num_embeddings=10" in f.top.evidence and "[1, 12]" in f.top.evidence
    assert "num_embeddings >= 13" in f.fix_attempt


@pytest.mark.parametrize(
    ("layer", "x", "expected"),
    [
        (nn.LayerNorm(16), torch.randn(4, 8), "normalized_shape=[16]"),
        (nn.LSTM(10, 8, batch_first=True), torch.randn(4, 5, 6), "input_size=10"),
        (nn.BatchNorm1d(6), torch.randn(4, 8), "num_features=6"),
    ],
    ids=["layernorm", "lstm", "batchnorm"],
)
def test_other_layers_say_what_they_expect(layer, x, expected, run_dir):
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = layer

        def forward(self, x):
            out = self.body(x)
            return (out[0] if isinstance(out, tuple) else out).mean(dim=-1)

    lens, _ = crash(Wrap(), x, torch.zeros(4), nn.MSELoss(), run_dir)
    f = only(lens)
    assert f.module == "body" and expected in f.top.evidence


def test_reshape_error_in_the_models_own_forward_is_attributed_to_the_model(run_dir):
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 2)

        def forward(self, x):
            return self.fc(x.view(-1, 12))

    lens, _ = crash(Flat(), torch.randn(5, 5), torch.zeros(5, 2), nn.MSELoss(), run_dir)
    f = only(lens)
    assert f.module == "" and f.likely_cause == "layer_input_mismatch"
    assert "[5, 5]" in f.top.evidence and "is invalid for input of size 25" in f.top.evidence


def test_loss_that_raises_on_target_shape_is_named(run_dir):
    model = nn.Linear(4, 3)
    target = torch.zeros(8, 1, dtype=torch.long)  # [N, 1] instead of [N]
    lens, _ = crash(model, torch.randn(8, 4), target, nn.CrossEntropyLoss(), run_dir)
    f = only(lens)
    assert f.likely_cause == "loss_target_shape_mismatch"
    assert f.module is None  # the loss is not a module of the model
    assert "[8, 3]" in f.top.evidence and "[8, 1]" in f.top.evidence
    assert "squeeze(1)" in f.fix_attempt
    assert f.evidence["loss"] == "CrossEntropyLoss"


def test_a_hard_coded_view_that_changes_the_row_count_names_where_and_the_flatten(run_dir):
    class Net(nn.Module):  # sized for 4x4 maps, fed 8x8: view(-1, 64) makes 4 rows a sample
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(4 * 4 * 4, 5)

        def forward(self, x):
            return self.fc(self.pool(self.conv(x)).view(-1, 4 * 4 * 4))

    target = torch.zeros(6, dtype=torch.long)
    lens, _ = crash(Net(), torch.randn(6, 3, 16, 16), target, nn.CrossEntropyLoss(), run_dir)
    f = only(lens)
    assert (f.likely_cause, f.module) == ("loss_target_shape_mismatch", "fc")
    assert "took 6 samples ([6, 3, 16, 16]) and returned 24 rows" in f.top.evidence
    assert "at the input of `fc` ([24, 64]), after `pool` gave [6, 4, 8, 8]" in f.top.evidence
    assert "torch.flatten(x, 1)" in f.fix_attempt and "256 features" in f.fix_attempt
    assert "squeeze" not in f.fix_attempt


def test_a_last_batch_of_one_sample_into_batch_norm_says_drop_last(run_dir):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(65, 8, generator=g), torch.randint(0, 3, (65,), generator=g))
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
            for x, y in DataLoader(data, batch_size=16):  # 65 = 4 x 16 + 1
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
    f = only(lens)
    assert (f.likely_cause, f.module, f.step) == ("layer_input_mismatch", "1", 4)
    assert "more than one value per channel" in f.top.evidence and "[1, 16]" in f.top.evidence
    assert "drop_last=True" in f.fix_attempt


@pytest.mark.parametrize(("cell", "batch_first"), [(nn.LSTM, True), (nn.GRU, False)])
def test_a_hidden_state_of_the_full_batch_meeting_a_smaller_last_batch_says_so(
    cell, batch_first, run_dir
):
    class Forecaster(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = cell(4, 16, batch_first=batch_first)
            self.head = nn.Linear(16, 1)

        def forward(self, x, state):
            out, _ = self.rnn(x, state)
            return self.head(out[:, -1] if batch_first else out[-1])

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 5, 4, generator=g), torch.randn(100, 1, generator=g)
    model = Forecaster()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="Expected hidden"):
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
            for i in range(0, 100, 16):  # 100 = 6 x 16 + 4
                h = torch.zeros(1, 16, 16)  # the bug: the batch size written in
                state = (h, h.clone()) if cell is nn.LSTM else h
                xb = x[i : i + 16] if batch_first else x[i : i + 16].transpose(0, 1)
                loss = nn.functional.mse_loss(model(xb, state), y[i : i + 16])
                opt.zero_grad()
                loss.backward()
                opt.step()
    f = only(lens)
    assert (f.likely_cause, f.module, f.step) == ("layer_input_mismatch", "rnn", 6)
    assert "built for its input's batch of 4" in f.top.evidence
    assert "built for a batch of 16" in f.top.evidence
    assert f"x.size({0 if batch_first else 1})" in f.fix_attempt
    assert "drop_last=True" in f.fix_attempt


# --- right shape, wrong kind: dtypes and class ids ---------------------------------------
def test_numpy_float64_data_into_a_float32_layer_is_dtype_mismatch(run_dir):
    import numpy as np

    rows = np.random.default_rng(0).normal(size=(32, 8))  # float64, as NumPy makes it
    x, y = torch.from_numpy(rows), torch.zeros(32, dtype=torch.long)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    lens, exc = crash(model, x, y, nn.CrossEntropyLoss(), run_dir)
    assert isinstance(exc, RuntimeError) and "dtype" in str(exc)
    f = only(lens)
    assert (f.likely_cause, f.module, f.severity) == ("dtype_mismatch", "0", "error")
    assert "float32 weights" in f.top.evidence and "float64 input" in f.top.evidence
    assert "torch.from_numpy(x).float()" in f.fix_attempt
    assert "in_features" not in f.first_check + f.fix_attempt  # not a size problem


def test_uint8_images_into_a_conv_are_dtype_mismatch_with_a_scale(run_dir):
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)  # decoded images, raw
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 2))
    lens, _ = crash(model, x, torch.zeros(4, dtype=torch.long), nn.CrossEntropyLoss(), run_dir)
    f = only(lens)
    assert (f.likely_cause, f.module) == ("dtype_mismatch", "0")
    assert "x.float()" in f.fix_attempt and "/ 255" in f.fix_attempt


def test_float_class_targets_for_cross_entropy_are_dtype_mismatch(run_dir):
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,)).float()  # labels read as floats
    lens, _ = crash(nn.Linear(4, 3), x, y, nn.CrossEntropyLoss(), run_dir)
    f = only(lens)
    assert f.likely_cause == "dtype_mismatch"
    assert "target float32" in f.top.evidence and "target.long()" in f.fix_attempt


@pytest.mark.parametrize(
    "message",
    [
        "Input type (torch.cuda.FloatTensor) and weight type (torch.FloatTensor) should be "
        "the same",
        "Input type (MPSFloatType) and weight type (torch.FloatTensor) should be the same",
        "Expected all tensors to be on the same device, but found at least two devices, "
        "cuda:0 and cpu!",
    ],
    ids=["cuda input, cpu weights", "mps input", "two devices"],
)
def test_a_device_mismatch_is_not_called_a_dtype_problem(message):
    """A GPU's wording (no GPU here: the rule reads the failure record of a run)."""
    from trainlens._plugins import catalogue_for, get_plugin_manager
    from trainlens._rules import shape_mismatch

    exc = {
        "type": "RuntimeError",
        "message": message,
        "phase": "forward",
        "module": "0",
        "module_type": "Conv2d",
        "inputs": [[2, 3, 8, 8]],
        "dtypes": ["float32"],
        "step": 0,
    }
    records = trainlens.Records({}, {"exception": exc, "modules": {"0": {"type": "Conv2d"}}})
    catalogue = catalogue_for(get_plugin_manager(entry_points=False))
    found = shape_mismatch.trainlens_diagnose(records=records, catalogue=catalogue)
    assert [f.likely_cause for f in found if f.likely_cause == "dtype_mismatch"] == []


@pytest.mark.parametrize(
    ("labels", "fix"),
    [
        (torch.arange(1, 17) % 3 + 1, "count from 0 (`target - 1`)"),  # 1..3 for 3 classes
        (torch.arange(16) % 10, "give it 10 (`out_features` of a final `nn.Linear`"),  # 3 outputs
    ],
    ids=["labels from 1", "more classes than outputs"],
)
def test_class_targets_outside_the_outputs_are_target_out_of_range(labels, fix, run_dir):
    lens, exc = crash(nn.Linear(4, 3), torch.randn(16, 4), labels, nn.CrossEntropyLoss(), run_dir)
    assert isinstance(exc, IndexError)
    f = only(lens)
    assert f.likely_cause == "target_out_of_range", f.summary()
    assert "3 classes (valid targets 0 to 2)" in f.top.evidence
    assert f"targets from {int(labels.min())} to {int(labels.max())}" in f.top.evidence
    assert fix in f.fix_attempt


def test_class_weights_of_the_wrong_length_are_named_not_the_shapes(run_dir):
    """`CrossEntropyLoss(weight=w)` with 3 weights for 5 classes raises a message that
    mentions a shape; the input [16, 5] and target [16] are right, the weights are not."""
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]))
    lens, exc = crash(nn.Linear(4, 5), torch.randn(16, 4), torch.arange(16) % 5, loss_fn, run_dir)
    assert isinstance(exc, RuntimeError)
    f = only(lens)
    assert (f.severity, f.likely_cause) == ("error", "loss_target_shape_mismatch")
    assert "its `weight` holds 3 class weights and the input has 5 classes" in f.top.evidence
    assert "criterion.weight.shape" in f.first_check
    assert "`output.shape` and `target.shape`" not in f.first_check
    assert "`weight` of shape [5]" in f.fix_attempt


def test_a_segmentation_mask_with_the_void_label_255_says_ignore_index(run_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1))
    masks = torch.randint(0, 5, (4, 16, 16))
    masks[:, ::5, :] = 255  # boundary pixels, as VOC marks them
    lens, exc = crash(model, torch.randn(4, 3, 16, 16), masks, nn.CrossEntropyLoss(), run_dir)
    assert isinstance(exc, IndexError)
    f = only(lens)
    assert f.likely_cause == "target_out_of_range"
    assert "targets from 0 to 255" in f.top.evidence
    assert "`nn.CrossEntropyLoss(ignore_index=255)`" in f.fix_attempt
    assert "nn.Linear" not in f.fix_attempt


def test_silent_broadcast_is_an_error_finding(run_dir):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5])  # [64]: the model outputs [64, 1]
    with pytest.warns(UserWarning, match="target size"):  # torch only warns
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
            for _ in range(20):
                loss = nn.MSELoss()(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
    f = only(lens)
    assert (f.severity, f.likely_cause, f.step) == ("error", "loss_target_shape_mismatch", 0)
    assert "[64, 1]" in f.top.evidence and "[64]" in f.top.evidence and "[64, 64]" in f.top.evidence
    assert "squeeze(-1)" in f.fix_attempt
    assert lens.drill["status"] == "failed" and lens.drill["steps"] == 20


def test_matching_loss_shapes_stay_clean(run_dir):
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(64, 3)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(10):
            loss = nn.MSELoss()(model(x), (x @ torch.tensor([1.0, -2.0, 0.5])).unsqueeze(1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert lens.findings == [] and lens.drill["status"] == "healthy"


# --- a loss written by hand that broadcasts ----------------------------------------------
def _hand_written(run_dir, loss_of, targets_2d=False):
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = x @ torch.randn(8) + 0.1 * torch.randn(512)  # [N], as a CSV column loads
    if targets_2d:
        y = y[:, None]
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    return train(
        model, (x, y), steps=64, batch=32, lr=0.05, loss_fn=loss_of,
        optimizer=torch.optim.SGD, run_dir=run_dir,
    )  # fmt: skip


def test_a_hand_written_mse_that_broadcasts_n_1_against_n_is_found(run_dir):
    lens = _hand_written(run_dir, lambda pred, y: ((pred - y) ** 2).mean())
    f = only(lens)
    assert (f.severity, f.likely_cause) == ("error", "loss_target_shape_mismatch")
    assert "averaged a [32, 32] tensor" in f.top.evidence
    assert "the model's output is [32, 1]" in f.top.evidence
    assert "output.squeeze(-1)" in f.fix_attempt
    assert list(lens.records.losses["source"].unique()) == ["backward()"]


def test_the_same_hand_written_mse_with_matching_shapes_is_clean(run_dir):
    lens = _hand_written(run_dir, lambda pred, y: ((pred - y) ** 2).mean(), targets_2d=True)
    assert lens.findings == [], lens.drill["findings"]


def test_a_pairwise_ranking_loss_over_n_by_n_is_not_a_broadcast(run_dir):
    # every pair of scores compared on purpose: both operands come from the model
    def pairwise(pred, y):
        s = pred.squeeze(1)
        sign = torch.sign(y[:, None] - y[None, :])
        return F.softplus(-sign * (s[:, None] - s[None, :])).mean()

    lens = _hand_written(run_dir, pairwise)
    assert not [f for f in lens.findings if f.symptom == "shape_mismatch"], lens.drill["findings"]


def test_a_recurrent_layer_fed_a_2d_batch_is_told_it_read_one_unbatched_sequence(run_dir):
    """An LSTM given [batch, features] takes it as one unbatched sequence: the samples
    became its time steps and each output depends on the samples before it. The fix is a
    sequence axis, not batch_first."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(10, 32)
            self.fc = nn.Linear(32, 2)

        def forward(self, x):
            return self.fc(self.rnn(x)[0])

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=g)
    y = (x[:, 0] > 0).long()
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for i in range(0, 256, 16):
            loss = nn.functional.cross_entropy(model(x[i : i + 16]), y[i : i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
    f = only(lens)
    assert (f.likely_cause, f.module) == ("batch_dim_mixing", "rnn")
    assert "`rnn` got a 2-D input [16, 10]" in f.fix_attempt
    assert "`x.unsqueeze(1)`" in f.fix_attempt
    assert "batch_first=False but is fed" not in f.fix_attempt
