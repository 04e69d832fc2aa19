"""Attention that cannot learn: query and key projections with exactly zero gradient.

`nn.MultiheadAttention` packs q, k and v into one `in_proj_weight`; with the q and k rows
zero-initialised each one's gradient is the other's value, so the pattern stays uniform
for good. The drill must say `attention_uniform` on that module whether the loss falls
(the v path still learns) or not, and stay clean with the default init.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlens

PROGRAMS = Path(__file__).parent / "programs"


def load(name):
    spec = importlib.util.spec_from_file_location(f"programs_{name}", PROGRAMS / f"{name}.py")
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    return program


def attention_finding(run_dir):
    drill = json.loads((run_dir / "drill.json").read_text())
    found = [f for f in drill["findings"] if f["symptom"] == "confusing_attention"]
    assert len(found) == 1, drill["findings"]
    return found[0]


def test_zero_query_and_key_projections_are_attention_uniform_on_that_module(run_dir):
    program = load("mha_classifier_zero_qk_init")
    program.main(run_dir)
    f = attention_finding(run_dir)
    assert f["likely_cause"] == "attention_uniform" and f["module"] == "attn"
    assert f["severity"] == "warning"  # like every attention_uniform: values still learn
    assert "attn.in_proj_weight.grad[:64]" in f["first_check"]


def test_zero_query_and_key_projections_are_named_even_when_the_loss_is_flat(run_dir):
    program = load("mha_classifier_zero_qk_init")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 16, (512, 8), generator=g)
    labels = torch.randint(0, 4, (512,), generator=g)  # nothing to learn: a flat loss
    model = program.AttentionClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = DataLoader(TensorDataset(ids, labels), batch_size=32)
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _ in range(4):
            for x, y in loader:
                optimizer.zero_grad()
                nn.CrossEntropyLoss()(model(x), y).backward()
                optimizer.step()
    f = attention_finding(run_dir)
    assert f["likely_cause"] == "attention_uniform" and f["module"] == "attn"
    ev = f["likely_causes"][0]["evidence"]
    assert "query and key projections got exactly zero gradient" in ev
    assert "on all" in ev and "sampled training steps" in ev
    assert f["evidence"]["qk_without_gradient"]["attn"]["q_grad_max"] == 0


def test_the_default_init_twin_stays_clean(run_dir):
    load("mha_classifier_default_init").main(run_dir)
    drill = json.loads((run_dir / "drill.json").read_text())
    assert drill["findings"] == [] and drill["status"] == "healthy"
    meta = json.loads((run_dir / "run.json").read_text())
    qk = meta["attention_qk_grad"]["attn"]
    assert qk["q_grad_max"] > 0 and qk["k_grad_max"] > 0 and qk["sampled_steps"] >= 5
