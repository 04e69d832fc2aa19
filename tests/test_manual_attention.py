"""Attention written by hand (nanoGPT/minGPT manual path, annotated-transformer's
`attention()`) is recorded like the built-in kinds; softmaxes that are not attention are not."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainlens
from manual_attention_models import (
    GPT,
    GatedExperts,
    MoERouter,
    PointerPooling,
    Seq2SeqEncoder,
    SoftmaxClassifier,
    next_token_batches,
    set_data,
    train_classifier,
    train_encoder,
    train_gpt,
)
from models import classification_data
from trainlens._probes._state import Sampling, is_suspended


def _mode_active() -> bool:
    return torch._C._len_torch_function_stack() > 0


def _only(lens, symptom="confusing_attention"):
    found = [f for f in lens.findings if f.symptom == symptom]
    assert len(found) == 1, [f.summary() for f in lens.findings]
    return found[0]


# --- observation ---------------------------------------------------------------------------
def test_the_nanogpt_manual_path_is_recorded_like_the_built_in_kinds(run_dir):
    lens = train_gpt(GPT(n_head=2, n_layer=2), run_dir, steps=6)
    att = lens.records.attention
    assert set(att["module"]) == {"blocks.0.attn", "blocks.1.attn"}
    assert set(att["source"]) == {"softmax(q @ k^T)"}
    assert set(att["head"]) == {0, 1} and att["step"].nunique() == 6
    assert set(att["rows"]) == {16 * 15}  # causal: the first query sees one key, left out
    layer = lens.records.attention_layers.set_index("module").loc["blocks.0.attn"]
    assert json.loads(layer["q_shape"]) == [16, 2, 16, 32]
    assert json.loads(layer["k_shape"]) == [16, 2, 16, 32]
    assert json.loads(layer["v_shape"]) == [16, 2, 16, 32]  # from `att @ v`
    assert (layer["heads"], layer["head_dim"], layer["mask"]) == (2, 32, "causal")
    assert layer["scale"] == pytest.approx(32**-0.5)
    assert (run_dir / "attention.png").read_bytes()[:4] == b"\x89PNG"
    assert "| blocks.0.attn | softmax(q @ k^T) |" in (run_dir / "drill.md").read_text()
    assert not _mode_active()


def test_recorded_entropy_is_that_of_the_softmax_the_model_computed(run_dir):
    torch.manual_seed(0)
    model = GPT(n_head=2)
    before = copy.deepcopy(model).eval()
    x, _ = next_token_batches()
    captured = {}

    def keep(module, args, output):
        captured["w"] = output.detach()

    before.blocks[0].attn.attn_dropout.register_forward_hook(keep)  # eval: the softmax itself
    before(x[:16])
    train_gpt(model, run_dir, steps=1)
    w = captured["w"]
    n = torch.arange(1, 17).float()  # causal: query i sees i + 1 keys
    ent = (-torch.xlogy(w, w).sum(-1) / torch.log(n.clamp(min=2)))[:, :, 1:]
    att = trainlens.load_run(run_dir).records.attention.sort_values("head")
    got = torch.tensor(att["entropy_norm"].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(got, ent.mean(dim=(0, 2)), atol=1e-5, rtol=1e-4)
    maxw = torch.tensor(att["max_weight"].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(maxw, w.amax(-1)[:, :, 1:].mean(dim=(0, 2)), atol=1e-5, rtol=1e-4)


def test_the_annotated_transformer_free_function_is_attributed_to_its_module(run_dir):
    lens = train_encoder(Seq2SeqEncoder(h=4), run_dir, steps=3)
    att = lens.records.attention
    assert set(att["module"]) == {"layers.0.self_attn"}  # the module that called attention()
    layer = lens.records.attention_layers.iloc[0]
    assert (layer["heads"], layer["head_dim"], layer["mask"]) == (4, 16, "mask")
    # padding: a row sees only the sequence's own tokens (mask == 0 filled with -1e9)
    assert (att["rows"] == 16 * 16).all()


def test_watching_hand_written_attention_changes_no_bit_and_no_random_stream(run_dir):
    def run(watch: bool):
        torch.manual_seed(0)
        gpt, enc = GPT(n_head=2), Seq2SeqEncoder(h=2)  # dropout on the weights in both
        train_gpt(gpt, run_dir / "gpt" if watch else None, steps=5, watch=watch)
        train_encoder(enc, run_dir / "enc" if watch else None, steps=5, watch=watch)
        return [p.detach().clone() for p in (*gpt.parameters(), *enc.parameters())], torch.rand(3)

    plain, rng_plain = run(False)
    watched, rng_watched = run(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))
    assert torch.equal(rng_plain, rng_watched)


class _Spy(nn.Module):
    """Notes, per call, whether a function mode was active during the forward."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        if not is_suspended():  # trainlens's own batch check runs the model once more
            self.seen.append(_mode_active())
        return self.inner(x)[0]


def test_the_mode_exists_only_during_sampled_training_forwards(run_dir):
    torch.manual_seed(0)
    model = _Spy(GPT(n_embd=16, block=8))
    x, y = next_token_batches(n=8, seq=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True, sample_every=20) as lens:
        for _ in range(125):
            loss = F.cross_entropy(model(x).view(-1, 16), y.view(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            model(x)  # evaluation: not looked at
    expected = [Sampling(every=20)(s) for s in range(125)] + [False]
    assert model.seen == expected
    assert not _mode_active()
    steps = sorted(set(lens.records.attention["step"]))
    assert steps == [s for s in range(125) if expected[s]]  # thinning out, then 120


def test_a_model_without_attention_is_looked_at_twice_then_never(run_dir):
    model = _Spy(_Tuple(nn.Sequential(nn.Linear(8, 16), nn.Softmax(dim=-1))))
    x = torch.randn(4, 3, 8)
    with trainlens.watch(model, run_dir=run_dir, quiet=True):
        for _ in range(5):
            model(x).sum().backward()
    assert model.seen == [True, True, False, False, False]


class _Tuple(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return (self.inner(x),)


def test_no_mode_or_hook_survives_an_exception_in_the_forward(run_dir):
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.gpt = GPT(n_embd=16, block=8)

        def forward(self, x):
            self.gpt(x)
            raise KeyError("user's own")

    model = Boom()
    with pytest.raises(KeyError, match="user's own"):
        with trainlens.watch(model, run_dir=run_dir, quiet=True):
            model(torch.zeros(2, 8, dtype=torch.long))
    assert not _mode_active()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# --- diagnosis ----------------------------------------------------------------------------
def test_inverted_scaling_in_the_manual_path_is_saturated_attention(run_dir):
    lens = train_gpt(GPT(scale="inverted"), run_dir, steps=12)
    f = lens.findings[0]
    assert (f.symptom, f.likely_cause, f.severity) == (
        "confusing_attention",
        "attention_saturated",
        "error",
    )
    assert f.module == "blocks.0.attn" and f.step == 0
    assert "the logits are scaled by 8, 1/sqrt(head_dim) is 0.125" in f.top.evidence


def test_missing_scaling_with_xavier_init_is_saturated_attention(run_dir):
    """annotated-transformer init without the 1/sqrt(d_k): sharp from the first step."""
    lens = train_encoder(Seq2SeqEncoder(scaled=False), run_dir, steps=12)
    f = _only(lens)
    assert f is lens.findings[0] and f.likely_cause == "attention_saturated"
    assert f.module == "layers.0.self_attn"
    assert "far sharper than at a healthy init from the first" in f.top.evidence
    assert "the logits are scaled by 1, 1/sqrt(head_dim) is 0.125" in f.top.evidence


def test_zero_query_key_projections_in_the_manual_path_are_uniform_attention(run_dir):
    lens = train_gpt(GPT(zero_qk=True), run_dir, steps=60)
    f = _only(lens)
    assert (f.likely_cause, f.severity, f.module) == (
        "attention_uniform",
        "warning",
        "blocks.0.attn",
    )
    assert "blocks.0.attn.c_attn.weight.grad.norm()" in f.first_check


def test_healthy_hand_written_attention_learns_and_stays_clean(run_dir):
    lens = train_gpt(GPT(), run_dir, steps=60)
    assert lens.findings == []
    per_step = lens.records.attention.groupby("step")["entropy_norm"].mean()
    assert per_step.iloc[0] > 0.9 and per_step.iloc[-1] < 0.5


def test_healthy_annotated_encoder_stays_clean(run_dir):
    lens = train_encoder(Seq2SeqEncoder(), run_dir, steps=30)
    assert not lens.records.attention.empty
    assert lens.findings == []


@pytest.mark.parametrize(
    "make", [SoftmaxClassifier, GatedExperts, MoERouter, PointerPooling], ids=lambda m: m.__name__
)
def test_softmaxes_that_are_not_attention_are_not_recorded(make, run_dir):
    torch.manual_seed(0)
    if make in (MoERouter, PointerPooling):
        x, y = set_data()
    else:
        x, y = classification_data(n=128, classes=4)
    lens = train_classifier(make(), x, y, run_dir, probabilities=make is SoftmaxClassifier)
    assert lens.records.attention.empty
    assert lens.findings == []


def test_a_softmax_over_another_axis_is_not_attention(run_dir):
    """Slot attention normalises over the slots (dim=1), not over the keys."""

    class Slots(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q, self.to_k = nn.Linear(8, 8), nn.Linear(8, 8)
            self.slots = nn.Parameter(torch.randn(1, 3, 8))

        def forward(self, x):
            q = self.to_q(self.slots.expand(len(x), 3, 8))
            dots = torch.einsum("bid,bjd->bij", q, self.to_k(x)) * 8**-0.5
            attn = dots.softmax(dim=1) + 1e-8
            return torch.einsum("bjd,bij->bid", x, attn / attn.sum(-1, keepdim=True))

    model = Slots()
    with trainlens.watch(model, run_dir=run_dir, quiet=True) as lens:
        model(torch.randn(4, 5, 8)).sum().backward()
    assert lens.records.attention.empty
    assert "attention_softmax_axis" not in lens.records.meta
    assert [f for f in lens.findings if f.symptom == "confusing_attention"] == []


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_self_attention_normalised_over_its_queries_is_softmax_over_queries(causal, run_dir):
    """`F.softmax(scores, dim=1)` on a sequence's [B, T, T] scores: dim 1 is the queries."""

    class ScratchAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(8, 24)

        def forward(self, x):
            q, k, v = self.qkv(x).split(8, dim=-1)
            scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(8)
            if causal:
                t = x.size(1)
                scores = scores.masked_fill(torch.triu(torch.ones(t, t), 1).bool(), -1e9)
            return torch.bmm(F.softmax(scores, dim=1), v)

    model = nn.Sequential(ScratchAttention(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(3):
            loss = model(torch.randn(4, 6, 8)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    f = _only(lens)
    assert (f.severity, f.likely_cause, f.module, f.step) == (
        "error", "softmax_over_queries", "0", 0
    )  # fmt: skip
    assert "[4, 6, 6] query-key scores over dim 1" in f.top.evidence
    assert "dim=-1" in f.fix_attempt
    assert lens.records.attention.empty  # not summarised as attention weights


def test_einsum_attention_with_an_additive_mask_is_recorded(run_dir):
    class EinsumAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(8, 24)

        def forward(self, x, pad):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            scores = torch.einsum("bqd,bkd->bqk", q, k) / math.sqrt(8)
            scores = scores + pad[:, None, :].float() * -1e9  # pad: True for padding
            return torch.einsum("bqk,bkd->bqd", scores.softmax(-1), v)

    model = EinsumAttention()
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[:, 4:] = True
    with trainlens.watch(model, run_dir=run_dir, quiet=True) as lens:
        model(torch.randn(3, 5, 8), pad).sum().backward()
    att = lens.records.attention
    assert att["module"].tolist() == [""] and att["rows"].tolist() == [15]
    layer = lens.records.attention_layers.iloc[0]
    assert layer["mask"] == "mask" and layer["scale"] == pytest.approx(8**-0.5)


def test_a_model_of_torch_modules_only_is_never_looked_into(run_dir):
    model = nn.Sequential(nn.Linear(8, 16), nn.Softmax(dim=-1))
    seen = []
    model[0].register_forward_pre_hook(lambda m, a: seen.append(_mode_active()))
    with trainlens.watch(model, run_dir=run_dir, quiet=True):
        for _ in range(3):
            model(torch.randn(4, 3, 8)).sum().backward()
    assert seen and not any(seen)
