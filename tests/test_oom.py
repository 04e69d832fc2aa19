"""oom: a real out-of-memory error names the module, the memory per sample and a batch
that fits; autograd graphs kept alive across steps are caught before any crash.

The CPU out-of-memory errors here ask for a petabyte or more: more than any address
space (2**47 bytes on x86-64), so the allocator refuses at once and no test ever fills
the machine's memory.
"""

from __future__ import annotations

import json
import time
import traceback
from collections import OrderedDict
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import trainlens
from trainlens._format import human_bytes
from trainlens._plugins import catalogue_for, get_plugin_manager
from trainlens._probes._state import Sampling
from trainlens._records import Records
from trainlens._rules import oom

PACKAGE_DIR = Path(trainlens.__file__).parent
PETABYTE = 2**50


def only_oom(lens):
    found = [f for f in lens.findings if f.symptom == "oom"]
    assert len(found) == 1, lens.drill["findings"]
    return found[0]


def run_until_raise(model, x, y, run_dir, steps=2):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    lens = trainlens.watch(model, opt, run_dir=run_dir, quiet=True)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        with lens:
            for _ in range(steps):
                loss = nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
    return lens, info.value, time.perf_counter() - t0


def upsampler() -> nn.Module:
    # a decoder that upsamples each 4-sample signal to 2**28 samples: 1 GiB per sample
    return nn.Sequential(
        OrderedDict(
            encode=nn.Linear(4, 4),
            upsample=nn.Upsample(scale_factor=2**26),
            smooth=nn.Conv1d(1, 1, 3, padding=1),
        )
    )


def test_cpu_oom_names_the_module_its_bytes_per_sample_and_a_batch_that_fits(run_dir):
    batch = 2**20  # 1 PiB in all: refused instantly, whatever the machine
    model = upsampler()
    x = torch.randn(batch, 1, 4)
    lens, err, seconds = run_until_raise(model, x, torch.zeros(1), run_dir)
    assert "DefaultCPUAllocator" in str(err) and seconds < 10

    f = only_oom(lens)
    assert (f.severity, f.likely_cause, f.module, f.step) == (
        "error", "batch_too_large", "upsample", 0,
    )  # fmt: skip
    ev = f.evidence
    assert ev["phase"] == "forward"
    assert ev["requested_bytes"] == PETABYTE
    assert ev["batch"] == batch
    assert ev["module_bytes_per_sample"] == 2**30  # [1, 2**28] float32
    assert ev["forward_bytes_per_sample"] >= 2**30
    assert ev["biggest_activations"][0]["module"] == "upsample"
    assert ev["biggest_activations"][0]["shape"] == [batch, 1, 2**28]
    # the suggested batch fits the memory that was available, with the margin
    available = ev["available_bytes"]
    assert available > 0 and ev["memory"]["kind"] == "cpu"
    assert 1 <= ev["batch_fit"] < batch
    assert ev["batch_fit"] * ev["training_bytes_per_sample"] <= 0.8 * available
    assert (ev["batch_fit"] + 1) * ev["training_bytes_per_sample"] > 0.8 * available
    assert f"use batch size {ev['batch_fit']} and accumulate" in f.fix_attempt
    assert "1.0 GB per sample" in f.top.evidence and "1.0 PB" in f.first_check
    assert "mixed precision" in f.fix_attempt and "checkpoint" in f.fix_attempt
    assert lens.drill["status"] == "failed"

    md = (run_dir / "drill.md").read_text()
    assert "| activation (batch) | per sample |" in md
    assert "| 0 | Linear" not in md and "| encode | Linear | [1048576, 1, 4] |" in md
    assert "[1048576, 1, 268435456] (would be) raised RuntimeError | 1.0 PB | 1.0 GB |" in md


def test_the_oom_exception_reaches_the_user_unchanged(run_dir):
    model = upsampler()
    _, err, _ = run_until_raise(model, torch.randn(2**20, 1, 4), torch.zeros(1), run_dir)
    frames = traceback.extract_tb(err.__traceback__)
    assert not any(Path(fr.filename).is_relative_to(PACKAGE_DIR) for fr in frames)
    assert any(fr.name == "run_until_raise" for fr in frames)
    assert trainlens.load_run(run_dir).drill["exception"]["type"] == "RuntimeError"
    assert not model._forward_hooks and not model._forward_pre_hooks  # hooks are gone


class Broadcast(nn.Module):
    """Broadcasts each feature over `n` positions and keeps the first: free in forward
    (views only), but its backward materialises the gradient of the whole broadcast."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return x.unsqueeze(-1).expand(*x.shape, self.n)[..., 0]


def test_oom_in_backward_names_the_module_whose_backward_ran(run_dir):
    batch = 2**18  # the broadcast's gradient is 4 GiB per sample, 1 PiB for the batch
    model = nn.Sequential(
        OrderedDict(embed=nn.Linear(4, 4), spread=Broadcast(2**28), head=nn.Linear(4, 1))
    )
    lens, err, seconds = run_until_raise(
        model, torch.randn(batch, 4), torch.randn(batch, 1), run_dir
    )
    assert "DefaultCPUAllocator" in str(err) and seconds < 10
    f = only_oom(lens)
    assert (f.likely_cause, f.module) == ("batch_too_large", "spread")
    assert f.evidence["phase"] == "backward"
    assert f.evidence["requested_bytes"] == PETABYTE
    assert f.evidence["batch"] == batch
    assert "failed in its backward" in f.first_check


class Recurrent(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, width))
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


def leaky_loop(run_dir, steps, keep, *, width=64, retain_graph=False):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)
    model = Recurrent(width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.MSELoss()
    total_loss, history = 0.0, []
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(steps):
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward(retain_graph=retain_graph)
            opt.step()
            if keep == "total":
                total_loss += loss  # the bug: keeps every step's graph
            elif keep == "list":
                history.append(loss)  # the bug: a list of losses with their graphs
    return lens


def test_total_loss_plus_equals_loss_is_a_warning_naming_start_growth_and_pattern(run_dir):
    lens = leaky_loop(run_dir, 30, "total")
    f = only_oom(lens)
    assert (f.severity, f.likely_cause, f.step) == ("warning", "graph_retained_across_steps", 0)
    # a graph is tracked on each sampled step: 18 of the first 30 (`Sampling`)
    assert f.evidence["retained_graphs"] >= 15
    assert f.evidence["retained_since_step"] == 0
    assert "memory_growth_per_step" in f.evidence
    assert "`total_loss += loss`" in f.first_check and "loss.item()" in f.fix_attempt
    assert "per step" in f.top.evidence
    assert lens.drill["status"] == "warning"  # memory still fits: a warning, not a failed run
    mem = lens.records.memory
    assert (
        len(mem) == sum(Sampling()(s) for s in range(30))
        and mem["kind"].isin(["cpu_heap", "cpu_rss"]).all()
    )
    assert mem["retained_graphs"].iloc[-1] >= 15
    md = (run_dir / "drill.md").read_text()
    last = max(s for s in range(30) if Sampling()(s))  # the last sampled step
    assert (
        "## Memory" in md and f"Autograd graphs of earlier steps still alive at step {last}" in md
    )


def test_retain_graph_with_kept_losses_shows_memory_climbing_by_the_activations(run_dir):
    lens = leaky_loop(run_dir, 30, "list", width=512, retain_graph=True)
    f = only_oom(lens)
    assert (f.severity, f.likely_cause) == ("warning", "graph_retained_across_steps")
    # every step keeps its saved activations: 64 x 512 floats per layer, ~0.5 MB a step
    assert f.evidence["memory_growth_per_step"] > 100_000, f.top.evidence
    assert "retain_graph=True" in f.top.evidence


def test_oom_after_graphs_piled_up_is_an_error_ranking_the_leak_first(run_dir):
    model = nn.Sequential(OrderedDict(encode=nn.Linear(4, 64), head=nn.Linear(64, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 4)
    huge = x[:1].expand(2**44, 4)  # a free view; the first layer's output would be 4 PiB
    total_loss = 0.0
    lens = trainlens.watch(model, opt, run_dir=run_dir, quiet=True)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        with lens:
            for step in range(12):
                loss = model(x if step < 11 else huge).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total_loss += loss
    f = only_oom(lens)
    assert f.severity == "error" and lens.drill["status"] == "failed"
    assert [c.id for c in f.likely_causes] == ["graph_retained_across_steps", "batch_too_large"]
    assert "then ran out of memory" in f.top.evidence
    assert f.evidence["batch"] == 2**44


CUDA_MESSAGE = (
    "CUDA out of memory. Tried to allocate 7.81 GiB. GPU 0 has a total capacity of 79.19 GiB "
    "of which 3.95 GiB is free. Including non-PyTorch memory, this process has 75.23 GiB "
    "memory in use. Of the allocated memory 70.12 GiB is allocated by PyTorch, and 4.28 GiB "
    "is reserved by PyTorch but unallocated."
)


def lm_records(memory: dict, message: str = CUDA_MESSAGE) -> Records:
    """The records of a language model whose logits [64, 1024, 32000] did not fit."""
    batch, seq, vocab, d = 64, 1024, 32000, 512
    rows = [
        ("", None, "LM", [[batch, seq]], [[batch, seq, vocab]], "int64"),
        ("embed", 2, "Embedding", [[batch, seq]], [[batch, seq, d]], "int64"),
        ("block", 3, "Linear", [[batch, seq, d]], [[batch, seq, d]], "float32"),
    ]
    shapes = pd.DataFrame(
        [
            {
                "step": 0,
                "call": call,
                "module": name,
                "type": typ,
                "split": "train",
                "inputs": json.dumps(ins),
                "outputs": json.dumps(outs),
                "dtypes": json.dumps([[in_dt], ["float32"]]),
                "output_bytes": 4 * outs[0][0] * outs[0][1] * outs[0][2],
                "batch": batch,
            }
            for name, call, typ, ins, outs, in_dt in rows[1:]
        ]
    )
    modules = {
        "": {"type": "LM", "leaf": False, "attrs": {}},
        "embed": {"type": "Embedding", "leaf": True, "attrs": {"embedding_dim": d}},
        "block": {"type": "Linear", "leaf": True, "attrs": {"out_features": d}},
        "head": {"type": "Linear", "leaf": True, "attrs": {"out_features": vocab}},
    }
    exception = {
        "type": "OutOfMemoryError",
        "message": message,
        "phase": "forward",
        "module": "head",
        "module_type": "Linear",
        "inputs": [[batch, seq, d]],
        "dtypes": ["float32"],
        "step": 0,
    }
    memory = {**memory, "model_input": {"shape": [batch, seq], "dtype": "int64"}}
    return Records(
        {"shapes": shapes}, {"modules": modules, "exception": exception, "memory": memory}
    )


def test_cuda_allocator_numbers_give_the_logits_per_sample_a_batch_and_a_sequence_length():
    # recorded by the CUDA reader on an 80 GB GPU: free, cached blocks and counters
    gib = 2**30
    memory = {
        "kind": "cuda",
        "device": "cuda:0",
        "total_bytes": int(79.19 * gib),
        "free_bytes": int(3.95 * gib),
        "allocated_bytes": int(70.12 * gib),
        "reserved_bytes": int(74.40 * gib),
        "available_bytes": int(3.95 * gib) + int(4.28 * gib),
        "oom": {"in_backward": False},
    }
    catalogue = catalogue_for(get_plugin_manager(entry_points=False))
    (f,) = oom.trainlens_diagnose(lm_records(memory), catalogue)
    assert (f.severity, f.likely_cause, f.module) == ("error", "batch_too_large", "head")
    ev = f.evidence
    assert ev["module_bytes_per_sample"] == 1024 * 32000 * 4  # 131 MB of logits per sample
    assert ev["requested_bytes"] == pytest.approx(7.81 * gib)
    assert ev["available_bytes"] == memory["available_bytes"]
    per_sample = 1024 * 32000 * 4 + 2 * 1024 * 512 * 4
    assert ev["forward_bytes_per_sample"] == per_sample
    fit = int(memory["available_bytes"] * 0.8 // (2 * per_sample))
    assert ev["batch_fit"] == fit and 1 <= fit < 64
    assert ev["sequence_length"] == 1024
    assert 1 <= ev["sequence_length_fit"] < 1024
    assert f"cut sequences from 1024 to about {ev['sequence_length_fit']}" in f.fix_attempt
    assert "`head` has 32000 outputs per position" in f.fix_attempt
    assert "cuda:0" in f.first_check


def test_without_a_memory_reading_the_free_memory_comes_from_the_cuda_message():
    old_format = (
        "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB total capacity; "
        "14.56 GiB already allocated; 3.44 MiB free; 14.59 GiB reserved in total by PyTorch)"
    )
    catalogue = catalogue_for(get_plugin_manager(entry_points=False))
    (f,) = oom.trainlens_diagnose(lm_records({}, old_format), catalogue)
    assert f.evidence["requested_bytes"] == 20 * 2**20
    assert f.evidence["available_bytes"] == pytest.approx(3.44 * 2**20)
    assert "not even one sample fits" in f.first_check and "no smaller batch" in f.first_check
    # one story: neither the summary nor the fix offers a batch size that fits
    assert f.evidence["batch_plan"] == "none" and f.evidence["batch_fit"] is None
    assert "not even one sample fits" in f.top.evidence and "would fit" not in f.top.evidence
    assert "make one sample smaller first" in f.fix_attempt and "accumulate" not in f.fix_attempt
    assert "no layer this wide" not in f.fix_attempt


def test_healthy_loop_records_one_memory_row_per_sampled_step_and_keeps_no_graphs(run_dir):
    lens = leaky_loop(run_dir, 20, "none")
    mem = lens.records.memory
    assert list(mem["step"]) == [s for s in range(20) if Sampling()(s)]
    assert (mem["memory_bytes"] > 0).all()
    assert mem["retained_graphs"].max() <= 1  # at most the previous step's, until reassigned
    assert lens.findings == []


def test_recorded_cuda_readings_flow_from_the_probe_to_the_drill(run_dir, monkeypatch):
    """The CUDA readers cannot run without a GPU: inject what they return on one."""
    from trainlens._probes import _memory

    gib = 2**30
    recorded = {
        "kind": "cuda",
        "device": "cuda:0",
        "total_bytes": 80 * gib,
        "free_bytes": 6 * gib,
        "allocated_bytes": 70 * gib,
        "reserved_bytes": 72 * gib,
        "available_bytes": 8 * gib,
    }
    counter = iter(range(0, 10**12, 2**20))  # memory_allocated(): +1 MiB per step
    monkeypatch.setattr(_memory, "snapshot", lambda device: dict(recorded))
    monkeypatch.setattr(
        _memory, "step_reader", lambda device: ("cuda_allocated", lambda: next(counter))
    )
    model = upsampler()
    lens, _, _ = run_until_raise(model, torch.randn(2**20, 1, 4), torch.zeros(1), run_dir)
    f = only_oom(lens)
    assert f.evidence["available_bytes"] == 8 * gib
    assert f.evidence["memory"]["kind"] == "cuda" and "cuda:0" in f.first_check
    assert f.evidence["batch_fit"] == int(8 * gib * 0.8 // f.evidence["training_bytes_per_sample"])

    lens = leaky_loop(Path("leak"), 12, "total")
    f = only_oom(lens)
    assert f.likely_cause == "graph_retained_across_steps"
    assert f.evidence["memory_kind"] == "cuda_allocated"
    assert f.evidence["memory_growth_per_step"] == 2**20
    assert "CUDA allocated memory went from" in f.top.evidence
    assert "1.0 MB per step" in f.top.evidence


def test_a_slow_heap_reading_switches_the_cpu_curve_to_rss_and_the_drill_reads_one_curve(
    run_dir, monkeypatch
):
    """glibc's mallinfo2 walks every free chunk (10 ms on a fragmented heap): after two slow
    readings in a row the run reads RSS, and the rule and the report use the RSS rows
    alone."""
    from trainlens._probes import _memory

    if _memory._MALLINFO2 is None:
        pytest.skip("no mallinfo2 here: the run reads RSS from the start")
    monkeypatch.setattr(_memory, "SLOW_HEAP_READ_S", -1.0)  # every heap reading is "slow"
    lens = leaky_loop(run_dir, 30, "list", width=512, retain_graph=True)
    mem = lens.records.memory
    assert list(mem["kind"]) == ["cpu_heap"] * 2 + ["cpu_rss"] * (len(mem) - 2)
    assert (mem["memory_bytes"] > 0).all()
    f = only_oom(lens)
    assert (f.likely_cause, f.evidence["memory_kind"]) == ("graph_retained_across_steps", "cpu_rss")
    # the RSS curve alone: from the third row on
    assert f"process RSS went from {human_bytes(mem['memory_bytes'].iloc[2])} at step " in (
        f.top.evidence
    )
    assert f"at step {int(mem['step'].iloc[2])} to " in f.top.evidence
    md = (run_dir / "drill.md").read_text()
    assert "process RSS, on sampled steps" in md


def test_one_slow_heap_reading_among_fast_ones_keeps_the_heap_curve(monkeypatch):
    """A reading the scheduler interrupted is slow once; a fragmented heap is slow every
    time: only two slow readings in a row switch to RSS."""
    from trainlens._probes import _memory

    if _memory._MALLINFO2 is None:
        pytest.skip("no mallinfo2 here: the run reads RSS from the start")
    monkeypatch.setattr(_memory, "SLOW_HEAP_READ_S", 0.5)
    kind, reader = _memory.step_reader(torch.device("cpu"))
    # (start, end) of each heap reading: slow, fast, slow, slow; the fifth reads RSS
    reader._clock = iter([0, 1, 1, 1, 1, 2, 2, 3]).__next__
    kinds = []
    for _ in range(5):
        kinds.append(reader.kind)
        assert reader() > 0
    assert (kind, kinds) == ("cpu_heap", ["cpu_heap"] * 4 + ["cpu_rss"])
    reader.close()


def test_a_heap_reading_dear_for_the_step_it_is_taken_in_switches_to_rss(monkeypatch):
    """A fragmented heap's 30-40 us reading is nothing to a 10 ms step but a quarter of a
    small model's: a reading slower than `HEAP_READ_SHARE` of the step (measured by the
    probe between readings) counts as slow, however far under `SLOW_HEAP_READ_S`."""
    from trainlens._probes import _memory

    if _memory._MALLINFO2 is None:
        pytest.skip("no mallinfo2 here: the run reads RSS from the start")
    monkeypatch.setattr(_memory, "SLOW_HEAP_READ_S", 0.5)
    monkeypatch.setattr(_memory, "HEAP_READ_SHARE", 0.05)
    kinds = []
    for step_s in (None, 10.0, 1.0):
        _, reader = _memory.step_reader(torch.device("cpu"))
        reader.step_s = step_s
        # every reading takes 0.1 s: under the 0.5 s ceiling, 1% of a 10 s step, 10% of 1 s
        reader._clock = iter([0, 0.1] * 3).__next__
        for _ in range(3):
            assert reader() > 0
        kinds.append(reader.kind)
        reader.close()
    assert kinds == ["cpu_heap", "cpu_heap", "cpu_rss"]


def test_the_watched_run_paces_its_heap_reader_by_its_own_steps(run_dir, monkeypatch):
    """The memory probe measures the step between two readings: a run whose heap reading
    costs more than that share of it reads RSS from its third sampled step on."""
    from trainlens._probes import _memory

    if _memory._MALLINFO2 is None:
        pytest.skip("no mallinfo2 here: the run reads RSS from the start")
    monkeypatch.setattr(_memory, "HEAP_READ_SHARE", 0.0)  # any reading is dear
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(6):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    mem = lens.records.memory
    # the first reading has no step to compare with; the next two are dear: then RSS
    assert list(mem["kind"]) == ["cpu_heap"] * 3 + ["cpu_rss"] * 3


# --- "backward through the graph a second time": a graph carried across steps ---------------
class WordLM(nn.Module):
    """An LSTM language model over a long token stream, the hidden state carried from one
    window to the next (the word-language-model loop)."""

    def __init__(self, vocab=40, emb=12, hidden=24):
        super().__init__()
        self.encoder = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden)
        self.decoder = nn.Linear(hidden, vocab)
        self.vocab, self.hidden = vocab, hidden

    def forward(self, tokens, state):
        out, state = self.rnn(self.encoder(tokens), state)
        return self.decoder(out), state


def train_word_lm(run_dir, detach: bool, windows: int = 6):
    torch.manual_seed(0)
    model = WordLM()
    stream = torch.randint(0, model.vocab, (windows * 10 + 1, 4))  # [time, batch]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    lens = trainlens.watch(model, opt, run_dir=run_dir, quiet=True)
    with lens:
        state = (torch.zeros(1, 4, model.hidden), torch.zeros(1, 4, model.hidden))
        for i in range(0, windows * 10, 10):
            if detach:
                state = tuple(h.detach() for h in state)
            x, y = stream[i : i + 10], stream[i + 1 : i + 11]
            opt.zero_grad()
            logits, state = model(x, state)
            loss = nn.functional.cross_entropy(logits.reshape(-1, model.vocab), y.reshape(-1))
            loss.backward()
            opt.step()
    return lens


def test_a_hidden_state_carried_without_detach_is_the_retained_graph_not_retain_graph(run_dir):
    with pytest.raises(RuntimeError, match="backward through the graph a second time") as info:
        train_word_lm(run_dir, detach=False)
    assert "trainlens" not in "".join(traceback.format_exception(info.value))  # unchanged
    drill = json.loads((run_dir / "drill.json").read_text())
    (f,) = drill["findings"]
    assert (f["symptom"], f["severity"], f["likely_cause"]) == (
        "oom",
        "error",
        "graph_retained_across_steps",
    )
    # the evidence: step 1's loss reaches the graph the model built at step 0
    assert f["evidence"]["failed_at_step"] == 1 and f["evidence"]["graph_from_steps"] == [0]
    assert "step 0" in f["likely_causes"][0]["evidence"]
    assert "hidden.detach()" in f["fix_attempt"] and "retain_graph=True" in f["fix_attempt"]
    assert "grad_fn" in f["first_check"]


def test_the_same_lm_detaching_its_hidden_state_runs_clean(run_dir):
    lens = train_word_lm(run_dir, detach=True)
    assert lens.drill["exception"] is None
    assert not [f for f in lens.findings if f.symptom == "oom"], lens.drill["findings"]


def test_a_loss_computed_once_before_the_loop_and_reused_is_found_too(run_dir):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with pytest.raises(RuntimeError, match="second time"):
        with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
            loss = nn.functional.mse_loss(model(x), y)
            for _ in range(3):
                opt.zero_grad()
                loss.backward()
                opt.step()
    drill = json.loads((run_dir / "drill.json").read_text())
    assert [f["likely_cause"] for f in drill["findings"]] == ["graph_retained_across_steps"]


def test_two_losses_sharing_one_forward_within_a_step_are_not_called_a_retained_graph(run_dir):
    """A GAN's generator output fed to the discriminator's loss without `.detach()`: the
    generator's backward runs into the graph the discriminator's backward freed in the same
    iteration. No earlier step's graph is involved, so no confident retained-graph error
    (watching either side)."""
    for watched in ("D", "G"):
        torch.manual_seed(0)
        G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        D = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        opt_g = torch.optim.Adam(G.parameters(), lr=2e-4)
        opt_d = torch.optim.Adam(D.parameters(), lr=2e-4)
        bce = nn.BCEWithLogitsLoss()
        model, opt = (D, opt_d) if watched == "D" else (G, opt_g)
        out_dir = run_dir / watched
        with pytest.raises(RuntimeError, match="second time"):
            with trainlens.watch(model, opt, run_dir=out_dir, quiet=True):
                for _ in range(3):
                    real = torch.randn(32, 2) + 2
                    fake = G(torch.randn(32, 4))
                    d_real, d_fake = D(real), D(fake)  # the bug: D(fake.detach())
                    loss_d = bce(d_real, torch.ones_like(d_real)) + bce(
                        d_fake, torch.zeros_like(d_fake)
                    )
                    opt_d.zero_grad()
                    loss_d.backward()
                    opt_d.step()
                    d_fake = D(fake)
                    loss_g = bce(d_fake, torch.ones_like(d_fake))
                    opt_g.zero_grad()
                    loss_g.backward()
                    opt_g.step()
        drill = json.loads((out_dir / "drill.json").read_text())
        assert not [f for f in drill["findings"] if f["symptom"] == "oom"], drill["findings"]
        md = (out_dir / "drill.md").read_text()
        assert "No problems found" not in md  # the run raised: not "nothing wrong"
        if not drill["findings"]:
            assert "No finding explains this exception" in md
