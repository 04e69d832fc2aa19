"""Bug classes found by running the program collection (tests/programs/) as a user would:
the evidence behind each diagnosis, and the healthy programs that once broke trainlens.

`tests/test_programs.py` asserts each program's symptom, first cause and module; here the
numbers and words of the findings that make those diagnoses right."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from diagnosis import PROGRAMS, load_program  # noqa: E402


def run(name: str, run_dir: Path) -> tuple[dict, dict]:
    load_program(PROGRAMS / f"{name}.py").main(run_dir)
    drill = json.loads((run_dir / "drill.json").read_text())
    meta = json.loads((run_dir / "run.json").read_text())
    return drill, meta


def flat(drill: dict) -> dict:
    return next(f for f in drill["findings"] if f["symptom"] == "flat_loss")


def test_float64_model_runs_clean_with_its_update_statistics(run_dir):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        drill, _ = run("mlp_float64_healthy", run_dir)
    assert drill["status"] == "healthy"
    assert not [w for w in seen if "trainlens" in str(w.message)]  # nothing lost
    params = pd.read_parquet(run_dir / "params.parquet")
    assert params["update_norm"].notna().any() and (params["grad_norm"] > 0).all()


def test_graph_with_a_sparse_adjacency_is_not_batch_mixing(run_dir):
    drill, meta = run("gcn_sparse_adjacency_healthy", run_dir)
    assert drill["status"] == "healthy"
    check = meta["batch_dependency"]
    assert not check["checked"] and "adjacency" in check["skipped"]


def test_oversized_steps_under_a_flat_loss_are_lr_too_high(run_dir):
    f = flat(run("cnn_sgd_lr_far_too_high", run_dir)[0])
    top = f["likely_causes"][0]
    assert top["id"] == "lr_too_high"
    assert "update/param ratio" in top["evidence"] and "grew" in top["evidence"]
    assert "Divide the learning rate by 10" in f["fix_attempt"]


def test_decayed_weights_are_no_healthy_machinery_for_label_mismatch(run_dir):
    f = flat(run("mlp_adam_weight_decay_huge", run_dir)[0])
    ids = [c["id"] for c in f["likely_causes"]]
    assert ids == ["unknown"] and f["severity"] == "warning"
    assert "weight_decay" in f["likely_causes"][0]["evidence"]


def test_labels_shuffled_apart_stay_label_mismatch(run_dir):
    f = flat(run("mlp_labels_shuffled_separately", run_dir)[0])
    assert f["likely_cause"] == "label_mismatch" and f["severity"] == "warning"


def test_sigmoid_into_bce_with_logits_is_probabilities_into_a_logits_loss(run_dir):
    f = flat(run("mlp_sigmoid_before_bce_with_logits", run_dir)[0])
    top = f["likely_causes"][0]
    assert top["id"] == "softmax_before_loss" and f["module"] == "net.4"
    assert "BCEWithLogitsLoss" in top["evidence"] and "[0, 1]" in top["evidence"]
    assert "sigmoid" in f["first_check"] and "log-softmax" not in f["first_check"]


def test_zero_initialised_weights_are_no_gradient_flow_not_dead_relus(run_dir):
    f = flat(run("mlp_all_weights_zero_init", run_dir)[0])
    ids = [c["id"] for c in f["likely_causes"]]
    assert ids[0] == "no_gradient_flow" and "dead_relu" not in ids
    assert f["module"] == "fc1" and "exactly zero themselves" in f["likely_causes"][0]["evidence"]


def test_head_swapped_in_after_the_optimizer_is_named_though_the_loss_falls(run_dir):
    drill, _ = run("cnn_finetune_head_replaced_after_optimizer", run_dir)
    f = flat(drill)
    assert f["severity"] == "warning" and f["module"] == "fc"  # the run looks fine
    top = f["likely_causes"][0]
    assert top["id"] == "params_not_in_optimizer"
    assert "never change" in top["evidence"] and "fresh" in top["evidence"]


def test_a_pretrained_backbone_left_out_of_the_optimizer_is_a_freeze(run_dir):
    drill, _ = run("finetune_head_only_optimizer_pretrained_healthy", run_dir)
    assert drill["status"] == "healthy"


def test_binary_targets_outside_0_1_are_named_not_the_logits(run_dir):
    """Masks read from PNG files as 0/255: the first BCE loss is ~9 with logits near zero.
    The drill names the targets' range and the division, not an init or a temperature."""
    drill, _ = run("segmentation_masks_read_as_0_255", run_dir)
    f = flat(drill)
    assert (f["severity"], f["likely_cause"]) == ("error", "bad_initial_loss")
    first = f["evidence"]["initial_loss"]
    assert first["target_range"] == [0.0, 255.0]
    assert max(abs(v) for v in first["input_range"]) < 1 < first["value"]  # not the logits
    assert "they range over [0, 255]" in f["first_check"]
    assert "1/sqrt(d)" not in f["first_check"]  # not the logits' story
    assert "`mask / 255.0`" in f["fix_attempt"]


def test_binary_targets_outside_0_1_are_named_even_when_the_first_loss_looks_right(run_dir):
    """A head initialised at zero gives logits of exactly 0, and BCE at logit 0 is ln 2
    whatever the target: the first loss looks like a uniform guess, the targets (0 and 2,
    class ids 1/2 shifted by one too few) are still wrong."""
    import torch
    from torch import nn

    import trainlens

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = 2.0 * (x[:, :1] > 0).float()  # class ids 0/2 where 0/1 were meant
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    nn.init.zeros_(model[2].weight)
    nn.init.zeros_(model[2].bias)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for i in range(0, 256, 16):
            loss = nn.BCEWithLogitsLoss()(model(x[i : i + 16]), y[i : i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
    first = lens.records.meta["initial_loss"]
    assert abs(first["value"] - 0.6931) < 1e-3  # ln 2: a plausible first loss
    f = flat(lens.drill)
    assert (f["severity"], f["likely_cause"]) == ("error", "bad_initial_loss")
    assert "they range over [0, 2]" in f["first_check"]


def test_an_input_of_zeros_is_named_not_a_cut_graph(run_dir):
    """Feature columns asked for by misspelt names, filled with zeros: the first layer's
    weights get zero gradients because their input is zero. The drill names the input and
    the loading to look at, not a `.detach()`, and does not advise dividing by its std."""
    drill, _ = run("tabular_features_misspelt_columns_filled_with_zeros", run_dir)
    f = flat(drill)
    assert (f["severity"], f["likely_cause"], f["module"]) == (
        "error",
        "unnormalized_input",
        "net.0",
    )
    assert [c["id"] for c in f["likely_causes"]] == ["unnormalized_input"]
    assert "every value is 0" in f["first_check"]
    assert "misspelt or renamed column" in f["first_check"]
    assert "/ std" not in f["fix_attempt"]
    assert "does not vary" in f["likely_causes"][0]["evidence"]


def test_a_sigmoid_before_cross_entropy_is_softmax_before_loss_naming_it(run_dir):
    """Logits squashed into [0, 1] by a final Sigmoid: no row sums to 1, every value lies
    in [0, 1], and the softmax of such a row cannot put more than e / (e + 2) on a class."""
    drill, _ = run("mlp_sigmoid_before_cross_entropy", run_dir)
    f = flat(drill)
    assert (f["likely_cause"], f["module"]) == ("softmax_before_loss", "net.3")
    assert "squashed into [0, 1]" in f["first_check"]
    assert "Remove the final `Sigmoid`" in f["fix_attempt"] and "0.551" in f["fix_attempt"]


def test_a_head_tied_to_the_embedding_is_not_told_to_zero_its_weight(run_dir):
    """A small language model whose head shares its weight with the embedding (GPT's weight
    tying) and keeps `nn.Embedding`'s N(0, 1) init: logits of std ~sqrt(d), a first loss
    far above ln(V). The usual advice, zeroing the last layer's weight, would zero every
    token's embedding too: the drill names the tie and the small init instead."""
    import torch
    from torch import nn

    import trainlens

    class TiedLM(nn.Module):
        def __init__(self, vocab: int = 64, d: int = 64):
            super().__init__()
            self.wte = nn.Embedding(vocab, d)
            self.mlp = nn.Sequential(nn.Linear(d, d), nn.Tanh())
            self.lm_head = nn.Linear(d, vocab, bias=False)
            self.lm_head.weight = self.wte.weight  # tied, as GPT-2 does

        def forward(self, idx):
            h = self.wte(idx)
            return self.lm_head(h + self.mlp(h))

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (64, 17), generator=g)
    model = TiedLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for i in range(0, 64, 8):
            logits = model(tokens[i : i + 8, :-1])
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, 64), tokens[i : i + 8, 1:].reshape(-1)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert lens.records.meta["tied_params"] == {"lm_head.weight": "wte.weight"}
    causes = [
        c
        for f in lens.drill["findings"]
        for c in f["likely_causes"]
        if c["id"] == "bad_initial_loss"
    ]
    assert causes, lens.drill["findings"]
    fix = next(
        f["fix_attempt"] for f in lens.drill["findings"] if f["likely_cause"] == "bad_initial_loss"
    )
    assert "`lm_head.weight` is the same tensor as `wte.weight`" in fix
    assert "nn.init.normal_(model.wte.weight, std=0.02)" in fix
    assert "zeros_(head.weight)" not in fix
