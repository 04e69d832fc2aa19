"""Attention observed without changing it; saturated and uniform attention diagnosed."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainlens
from attention_models import (
    EncoderClassifier,
    TinyGPT,
    copy_data,
    first_token_data,
    train_encoder,
    train_gpt,
)
from models import classification_data, mlp, train
from trainlens._probes._attention import sdpa_is_patched
from trainlens._probes._state import Sampling

ORIGINAL_SDPA = F.scaled_dot_product_attention


def _qk(model: EncoderClassifier, fn) -> EncoderClassifier:
    with torch.no_grad():
        for layer in model.encoder.layers:
            fn(layer.self_attn)
    return model


def _attention_finding(lens):
    found = [f for f in lens.findings if f.symptom == "confusing_attention"]
    assert len(found) == 1, [f.summary() for f in lens.findings]
    return found[0]


# --- observation ---------------------------------------------------------------------------
def test_transformer_encoder_attention_is_recorded_per_layer_and_head(run_dir):
    lens = train_encoder(EncoderClassifier(), run_dir, steps=12)
    att = lens.records.attention
    assert set(att["module"]) == {"encoder.layers.0.self_attn", "encoder.layers.1.self_attn"}
    assert set(att["head"]) == {0, 1, 2, 3}
    assert att["step"].nunique() == sum(Sampling()(s) for s in range(12))  # sampled steps
    assert att["entropy_norm"].between(0, 1.0001).all()
    layers = lens.records.attention_layers.set_index("module")
    row = layers.loc["encoder.layers.0.self_attn"]
    assert json.loads(row["q_shape"]) == [16, 4, 12, 8]  # [batch, heads, queries, head_dim]
    assert json.loads(row["out_shape"]) == [16, 12, 32]
    assert row["mask"] == "key_padding_mask" and row["head_dim"] == 8
    # saved with the run and loadable
    assert (run_dir / "attention.parquet").is_file()
    assert trainlens.load_run(run_dir).records.attention.shape == att.shape


def test_recomputed_weights_match_what_multihead_attention_returns(run_dir):
    """need_weights=True on a direct nn.MultiheadAttention call gives the true weights."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, dropout=0.2)  # sequence first, dropout on weights
    x = torch.randn(7, 5, 16)  # [L, N, E]
    pad = torch.zeros(5, 7, dtype=torch.bool)
    pad[:, 5:] = True  # the last two keys are padding
    with trainlens.watch(mha, run_dir=run_dir, quiet=True) as lens:
        with torch.no_grad():
            mha.eval()  # only to read exact weights here: the recording is from train mode
            _, true_w = mha(x, x, x, key_padding_mask=pad, average_attn_weights=False)
        mha.train()
        out, _ = mha(x, x, x, key_padding_mask=pad)
        out.sum().backward()
    att = lens.records.attention
    assert set(att["module"]) == {""}
    entropy = -torch.xlogy(true_w, true_w).sum(-1) / math.log(5)  # 5 keys may be seen
    expected = entropy.mean(dim=(0, 2))
    got = torch.tensor(att.sort_values("head")["entropy_norm"].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    expected_max = true_w.amax(-1).mean(dim=(0, 2))
    got_max = torch.tensor(att.sort_values("head")["max_weight"].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(got_max, expected_max, atol=1e-5, rtol=1e-4)


def test_hand_written_sdpa_is_attributed_to_the_module_that_called_it(run_dir):
    lens = train_gpt(TinyGPT(), run_dir, steps=5)
    att = lens.records.attention
    assert set(att["module"]) == {"attn"}
    assert set(att["source"]) == {"scaled_dot_product_attention"}
    layer = lens.records.attention_layers.iloc[0]
    assert layer["mask"] == "causal"
    assert json.loads(layer["q_shape"]) == [16, 4, 12, 8]
    # causal rows: query i sees i+1 keys; the first row (one key) is left out
    assert set(att["rows"]) == {16 * 11}
    assert not sdpa_is_patched() and F.scaled_dot_product_attention is ORIGINAL_SDPA


def test_sdpa_masks_and_grouped_heads_are_respected(run_dir):
    """A bool mask (True takes part) and enable_gqa: checked against weights by hand."""

    class Block(nn.Module):
        def forward(self, q, k, v, mask):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    model = nn.Sequential(Block())
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 8, generator=g, requires_grad=True)
    k, v = torch.randn(2, 2, 6, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g)
    mask = torch.rand(6, 6, generator=g) > 0.3
    mask[:, 0] = True
    with trainlens.watch(model, run_dir=run_dir, quiet=True) as lens:
        model[0](q, k, v, mask).sum().backward()
    kk = k.repeat_interleave(2, dim=1)
    w = torch.softmax((q @ kk.transpose(-2, -1) / math.sqrt(8)).masked_fill(~mask, -math.inf), -1)
    n = mask.sum(-1)
    ent = -torch.xlogy(w, w).sum(-1) / torch.log(n.clamp(min=2).float())
    rows = (n >= 2).expand_as(ent)
    expected = (ent * rows).sum(dim=(0, 2)) / rows.sum(dim=(0, 2))
    att = lens.records.attention.sort_values("head")
    assert att["module"].tolist() == ["0"] * 4
    got = torch.tensor(att["entropy_norm"].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-4)


def test_log_attention_records_weights_computed_by_hand(run_dir):
    class ManualAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(8, 24)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            e = torch.exp(q @ k.transpose(-2, -1) / math.sqrt(8))  # no softmax call: not seen
            w = e / e.sum(-1, keepdim=True)
            self.last = w
            return w @ v

    model = ManualAttention()
    x = torch.randn(3, 5, 8)
    with trainlens.watch(model, run_dir=run_dir, quiet=True) as lens:
        model(x).sum().backward()
        lens.log_attention("", model.last)
        with pytest.raises(trainlens.UsageError, match="queries, keys"):
            lens.log_attention("", torch.ones(3))
        with pytest.raises(trainlens.UsageError, match="does not broadcast"):
            lens.log_attention("", model.last, mask=torch.ones(4, 4, dtype=torch.bool))
        model(x).sum().backward()  # the next step (no optimizer: a backward pass)
        lens.log_attention("", model.last, causal=True)
    att = lens.records.attention
    assert att["source"].tolist() == ["log_attention"] * 2
    assert att["rows"].tolist() == [15, 12]  # causal: the first of 5 rows sees one key
    with pytest.raises(trainlens.UsageError, match="inside its `with watch"):
        lens.log_attention("", model.last)


def test_watching_attention_changes_no_parameter_and_no_random_stream(run_dir):
    """Dropout in the encoder and in SDPA: watched and unwatched runs are bit-identical."""

    def run(watch: bool):
        torch.manual_seed(0)
        enc, gpt = EncoderClassifier(), TinyGPT()
        train_encoder(enc, run_dir / "enc" if watch else None, steps=8, watch=watch)
        train_gpt(gpt, run_dir / "gpt" if watch else None, steps=8, watch=watch)
        return [p.detach().clone() for p in (*enc.parameters(), *gpt.parameters())], torch.rand(3)

    plain, rng_plain = run(False)
    watched, rng_watched = run(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))
    assert torch.equal(rng_plain, rng_watched)  # no random number was drawn on the side


def test_eval_inference_keeps_the_fused_fast_path_and_its_numbers_inside_the_block(
    run_dir, monkeypatch
):
    """trainlens hooks globally, not per module: `TransformerEncoderLayer` checks its
    modules for hooks and would leave its fused eval path (other numbers) if it saw one."""
    torch.manual_seed(0)
    model = EncoderClassifier().eval()
    ids, pad, _ = first_token_data(n=8)
    fused, calls = torch._transformer_encoder_layer_fwd, []

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", counting)
    with torch.no_grad():
        before = model(ids, pad)
        with trainlens.watch(model, run_dir=run_dir, quiet=True) as lens:
            inside = model(ids, pad)  # eval without grad: not a training step, not recorded
        fast_inside = len(calls)
        after = model(ids, pad)
    assert fast_inside == 4 and len(calls) == 6  # 2 layers, fused before, inside and after
    assert torch.equal(inside, before) and torch.equal(after, before)
    assert lens.records.attention.empty
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_watched_encoder_layer_keeps_its_fused_eval_path_between_training_steps(run_dir):
    """The watched model is itself a `TransformerEncoderLayer`: no hook of its own, so its
    evaluation passes inside the block stay on the fused path (and its numbers)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    opt = torch.optim.SGD(layer.parameters(), lr=0.01)
    x = torch.randn(3, 5, 16)
    fused, calls = torch._transformer_encoder_layer_fwd, []

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    with trainlens.watch(layer, opt, run_dir=run_dir, quiet=True):
        for _ in range(3):
            layer.train()
            loss = layer(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            layer.eval()
            with torch.no_grad(), pytest.MonkeyPatch.context() as m:
                m.setattr(torch, "_transformer_encoder_layer_fwd", counting)
                layer(x)
    assert len(calls) == 3


def test_no_sdpa_patch_survives_the_block_even_after_an_exception(run_dir):
    model = TinyGPT()
    x, _ = copy_data(n=4)
    with pytest.raises(ZeroDivisionError):
        with trainlens.watch(model, run_dir=run_dir, quiet=True):
            assert sdpa_is_patched()
            model(x)
            raise ZeroDivisionError
    assert F.scaled_dot_product_attention is ORIGINAL_SDPA
    # nested blocks: the inner exit keeps the outer's wrapper; the outer exit restores it
    with trainlens.watch(model, run_dir=run_dir / "outer", quiet=True):
        with trainlens.watch(nn.Linear(2, 2), run_dir=run_dir / "inner", quiet=True):
            assert sdpa_is_patched()
        assert sdpa_is_patched()
        model(x).sum().backward()
    assert F.scaled_dot_product_attention is ORIGINAL_SDPA
    assert not sdpa_is_patched()


# --- diagnosis -------------------------------------------------------------------------------
def test_qk_scaled_up_in_an_encoder_is_saturated_attention(run_dir):
    model = _qk(EncoderClassifier(), lambda a: a.in_proj_weight[:64].mul_(30))
    lens = train_encoder(model, run_dir, steps=20)
    finding = lens.findings[0]
    assert finding.symptom == "confusing_attention" and finding.severity == "error"
    assert finding.likely_cause == "attention_saturated"
    assert finding.module == "encoder.layers.0.self_attn" and finding.step == 0
    assert "at step 0 in all 4 heads" in finding.top.evidence
    assert "1/sqrt(head_dim)" in finding.first_check
    drill = json.loads((run_dir / "drill.json").read_text())
    assert drill["status"] == "failed"
    assert drill["findings"][0]["likely_cause"] == "attention_saturated"


def test_sdpa_without_useful_scaling_is_saturated_attention(run_dir):
    """q/k weights 30x too large in a hand-written block: rows one-hot from step 0."""
    lens = train_gpt(TinyGPT(qk_gain=30.0), run_dir, steps=10)
    finding = lens.findings[0]
    assert finding.likely_cause == "attention_saturated" and finding.module == "attn"
    assert "(healthy at init ~0.9)" in finding.top.evidence


def test_zero_query_key_projections_are_uniform_attention(run_dir):
    def zero(a):
        a.in_proj_weight[:64].zero_()
        a.in_proj_bias[:64].zero_()

    lens = train_encoder(_qk(EncoderClassifier(), zero), run_dir, steps=60)
    finding = lens.findings[0]
    assert finding.symptom == "confusing_attention" and finding.severity == "warning"
    assert finding.likely_cause == "attention_uniform"
    assert finding.module == "encoder.layers.0.self_attn"
    assert "while the train loss fell" in finding.top.evidence
    assert "in_proj_weight.grad[:64]" in finding.first_check


def test_a_huge_temperature_in_sdpa_is_uniform_attention(run_dir):
    lens = train_gpt(TinyGPT(temperature=1e3), run_dir, steps=60)
    finding = _attention_finding(lens)
    assert finding is lens.findings[0]
    assert finding.likely_cause == "attention_uniform" and finding.module == "attn"
    assert "attn.c_attn.weight.grad.norm()" in finding.first_check
    assert "(recorded: 3.54e-04)" in finding.first_check
    # the recorded logit scale shows the temperature
    assert "the logits are scaled by 3.54e-04, 1/sqrt(head_dim) is 0.354" in finding.top.evidence


def test_healthy_attention_learns_and_stays_clean(run_dir):
    """Causal rows near the start are trivially peaked; uniform at init is normal."""
    lens = train_gpt(TinyGPT(), run_dir, steps=60)
    assert lens.findings == []
    per_step = lens.records.attention.groupby("step")["entropy_norm"].mean()
    assert per_step.iloc[0] > 0.9 and per_step.iloc[-1] < 0.8  # it sharpened as it learned


def test_short_runs_are_not_judged_uniform(run_dir):
    lens = train_gpt(TinyGPT(temperature=1e3), run_dir, steps=20)
    assert lens.findings == []


# --- report ----------------------------------------------------------------------------------
def test_attention_png_and_drill_section_where_attention_was_observed(run_dir):
    lens = train_gpt(TinyGPT(), run_dir, steps=8)
    png = run_dir / "attention.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    md = (run_dir / "drill.md").read_text()
    assert "## Attention" in md and "](attention.png)" in md
    assert "| attn | scaled_dot_product_attention | [16, 4, 12, 8]" in md
    maps = lens.records.attention_maps
    assert maps["step"].tolist() == [0, 7]
    assert len(json.loads(maps["weights"].iloc[0])) == 12


def test_no_attention_png_for_a_model_without_attention(run_dir):
    lens = train(mlp(), classification_data(), steps=5, run_dir=run_dir)
    assert lens.records.attention.empty
    assert not (run_dir / "attention.png").exists()
    assert "## Attention" not in (run_dir / "drill.md").read_text()


def test_decoder_self_and_cross_attention_and_unbatched_calls_are_recorded(run_dir):
    torch.manual_seed(0)
    dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(16, 2, 32, dropout=0.1), 1)
    tgt, mem = torch.randn(5, 3, 16), torch.randn(7, 3, 16)  # sequence first
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    with trainlens.watch(dec, run_dir=run_dir, quiet=True) as lens:
        dec(tgt, mem, tgt_mask=mask, tgt_is_causal=True).sum().backward()
    layers = lens.records.attention_layers.set_index("module")
    assert json.loads(layers.loc["layers.0.self_attn", "k_shape"]) == [3, 2, 5, 8]
    assert json.loads(layers.loc["layers.0.multihead_attn", "k_shape"]) == [3, 2, 7, 8]
    rows = lens.records.attention.groupby("module")["rows"].first()
    assert rows["layers.0.self_attn"] == 3 * 4  # causal: the first of 5 queries sees 1 key
    assert rows["layers.0.multihead_attn"] == 3 * 5

    mha = nn.MultiheadAttention(8, 2)
    x = torch.randn(4, 8)  # unbatched [L, E]
    with trainlens.watch(mha, run_dir=run_dir / "unbatched", quiet=True) as lens:
        mha(x, x, x)[0].sum().backward()
    assert lens.records.attention["rows"].tolist() == [4, 4]
    assert lens.records.events.empty


class MHAGPT(nn.Module):
    """A pre-norm GPT of two `nn.MultiheadAttention` blocks with a causal mask."""

    def __init__(self, vocab=32, seq=16, d=64):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.ln1 = nn.ModuleList([nn.LayerNorm(d) for _ in range(2)])
        self.attn = nn.ModuleList([nn.MultiheadAttention(d, 4, batch_first=True) for _ in range(2)])
        self.mlp = nn.ModuleList(
            [nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)) for _ in range(2)]
        )
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        self.register_buffer("mask", torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1))

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for ln, attn, block in zip(self.ln1, self.attn, self.mlp, strict=True):
            h = ln(x)
            x = x + attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
            x = x + block(x)
        return self.head(self.ln_f(x))


def test_uniform_attention_in_a_run_a_huge_lr_throws_about_names_the_lr_as_its_root(run_dir):
    torch.manual_seed(0)
    text = torch.randint(0, 32, (4000,))
    for i in range(2, len(text)):
        text[i] = (3 * text[i - 1] + text[i - 2]) % 32
    model = MHAGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=3.0, weight_decay=0.1)  # the bug: lr 3
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(200):
            ix = torch.randint(len(text) - 17, (16,))
            x = torch.stack([text[i : i + 16] for i in ix])
            y = torch.stack([text[i + 1 : i + 17] for i in ix])
            loss = nn.functional.cross_entropy(model(x).reshape(-1, 32), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    symptoms = {f.symptom: f for f in lens.findings}
    assert symptoms["diverging"].likely_cause == "lr_too_high"
    attention = symptoms["confusing_attention"]  # rows uniform in a run thrown about
    assert (attention.severity, attention.likely_cause) == ("warning", "attention_uniform")
    assert "likely a consequence of lr_too_high" in attention.top.evidence
