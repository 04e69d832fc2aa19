"""Bounded records: long runs are thinned, and what the rules need survives the thinning."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import trainlens
from healthy_programs import PROGRAMS
from models import classification_data, mlp, train
from trainlens import _records
from trainlens._demo import load_example
from trainlens._plugins import catalogue_for, diagnose, get_plugin_manager
from trainlens._probes import LossProbe, WatchState
from trainlens._probes._state import Sampling
from trainlens._records import TABLES, Records, Table, Thinning

STEPS = 100_000
PLANTED = 90_000


def _healthy_loss(step: int) -> float:
    return 2.0 / (1 + step / 2000) + 0.01 * math.sin(step)


def long_record(planted: int = PLANTED) -> tuple[Records, WatchState]:
    """100 000 steps recorded through the real state, tables and loss probe, no model run.

    From step `planted` on, the loss jumps to ~5 and the gradient norm to ~1000 (and stay
    there), and the loss silently broadcasts a [8, 1] input against an [8] target.
    """
    model = nn.Linear(4, 1)
    state = WatchState(model, None, Sampling())
    losses, params = state.tables["losses"], state.tables["params"]
    probe = LossProbe(state)
    for step in range(STEPS):
        broken = step >= planted
        loss = 5.0 + (step - PLANTED) * 1e-4 if broken else _healthy_loss(step)
        losses.append(step, "train", "MSELoss", loss)
        if state.sampled:
            grad = 1000.0 + step * 1e-3 if broken else 1.0 + 0.1 * math.sin(step)
            params.append(step, "weight", "", True, grad, 2.0, 1e-3)
            params.append(step, "bias", "", True, grad / 2, 0.5, 1e-3)
        if step == planted:
            probe._check_shapes("MSELoss", nn.MSELoss(), torch.zeros(8, 1), torch.zeros(8))
        state.end_step(lr=0.1)
    frames = {name: t.frame() for name, t in state.tables.items()}
    meta = {"steps": STEPS, "exception": None, "modules": {}}
    return Records(frames, meta), state


@pytest.fixture(scope="module")
def planted():
    return long_record()


class LossSpikeRule:
    """A team's rule on the loss curve and gradient norms: where did training break?"""

    def __init__(self, recipes):
        self.recipes = recipes

    @trainlens.hookimpl
    def trainlens_diagnose(self, records, catalogue):
        loss = records.train_loss()
        early = loss[loss.index < 1000].median()
        spike = loss[loss > 2 * early]
        params = records.params
        grads = params[params["param"] == "weight"].set_index("step")["grad_norm"]
        grad_jump = grads[grads > 100 * grads[grads.index < 1000].median()]
        if spike.empty or grad_jump.empty:
            return []
        step = int(spike.index[0])
        cause = catalogue.cause(
            "team_loss_spike",
            "blew_up",
            confidence=0.5,
            evidence=f"loss {spike.iloc[0]:.2f} at step {step}, gradient norm from step "
            f"{int(grad_jump.index[0])}",
            step=step,
        )
        return [catalogue.finding("team_loss_spike", "warning", [cause], step=step)]

    @trainlens.hookimpl
    def trainlens_catalogue_dirs(self):
        return [self.recipes]


def _diagnose(records: Records, plugins=()) -> list:
    pm = get_plugin_manager(plugins, entry_points=False)
    return diagnose(pm, records, catalogue_for(pm))


def test_a_long_record_stays_bounded(planted):
    records, state = planted
    for name, table in state.tables.items():
        policy = _records.policy_for(name)
        if policy is not None:
            assert len(table) <= policy.max_rows, name
    assert state.tables["steps"].seen == STEPS
    assert len(records.steps) < STEPS // 2  # really thinned
    assert len(records.losses) < STEPS // 2


def test_the_first_steps_are_kept_in_full(planted):
    records, _ = planted
    head = _records.DEFAULT_THINNING.head_steps
    assert list(records.steps["step"].iloc[:head]) == list(range(head))
    loss = records.train_loss()
    assert list(loss.index[:head]) == list(range(head))
    assert loss.iloc[0] == _healthy_loss(0)
    # sampled steps of the dense phase and after: every one of them, for both params
    sampled = sorted(s for s in range(head) if Sampling()(s))
    assert sorted(set(records.params["step"][records.params["step"] < head])) == sampled


def test_silent_broadcast_planted_at_step_90000_is_diagnosed_at_that_step(planted):
    records, _ = planted
    found = [f for f in _diagnose(records) if f.likely_cause == "loss_target_shape_mismatch"]
    assert len(found) == 1
    assert found[0].step == PLANTED
    assert "at step 90000" in found[0].likely_causes[0].evidence


def test_loss_curve_rule_finds_the_blow_up_at_step_90000_after_thinning(planted, tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "team_loss_spike.toml").write_text(
        'symptom = "team_loss_spike"\n'
        "[causes.blew_up]\n"
        'title = "Training blew up"\n'
        'first_check = "Look at the loss around the step"\n'
        'fix_attempt = "Lower the learning rate"\n'
    )
    records, _ = planted
    found = [
        f for f in _diagnose(records, [LossSpikeRule(recipes)]) if f.symptom == "team_loss_spike"
    ]
    assert len(found) == 1
    assert found[0].step == PLANTED
    assert "gradient norm from step 90000" in found[0].likely_causes[0].evidence
    # the same rule stays silent on the record up to the planted failure
    before = Records({n: f[f["step"] < PLANTED] for n, f in records.frames.items()}, records.meta)
    rule = LossSpikeRule(recipes)
    assert not [f for f in _diagnose(before, [rule]) if f.symptom == "team_loss_spike"]


def test_extremes_non_finite_values_and_change_points_survive_thinning():
    t = Table(TABLES["losses"], Thinning(head_steps=100, max_rows=2_000))
    for step in range(50_000):
        value = 1.0
        if step == 31_337:
            value = 1e6  # a one-step spike
        elif step == 40_001:
            value = -3.0  # a one-step dip
        elif step >= 45_000:
            value = math.nan if step % 2 else 2.0  # NaNs from here, flapping
        t.append(step, "train", "MSELoss", value)
        if step % 5_000 == 0:
            t.append(step, "val", "MSELoss", 7.0)  # a rare key is never thinned away
    df = t.frame()
    assert len(df) <= 2_000 and t.dropped > 0
    assert df["value"].max() == 1e6 and int(df.loc[df["value"].idxmax(), "step"]) == 31_337
    assert int(df.loc[df["value"].idxmin(), "step"]) == 40_001
    assert int(df.loc[df["value"].isna(), "step"].min()) == 45_001  # the first NaN
    assert 44_999 in set(df["step"]) and 45_000 in set(df["step"])  # around the change
    assert list(df.loc[df["split"] == "val", "step"]) == list(range(0, 50_000, 5_000))
    assert list(df["step"]) == sorted(df["step"])  # still in time order
    assert df["step"].iloc[-1] == 49_999


def test_a_one_off_table_keeps_its_first_rows_and_counts_the_rest():
    t = Table(TABLES["events"], Thinning(max_rows=10, thin=False))
    for step in range(25):
        t.append(step, "kind", None, f"message {step}", "{}")
    assert list(t.frame()["step"]) == list(range(10))
    assert t.seen == 25 and t.dropped == 15


def test_a_thinned_run_says_so_in_its_meta(run_dir, monkeypatch):
    monkeypatch.setattr(_records, "DEFAULT_THINNING", Thinning(head_steps=5, max_rows=16))
    lens = train(mlp(), classification_data(), steps=30, run_dir=run_dir)
    thinning = lens.records.meta["thinning"]
    assert thinning["steps"]["rows_seen"] == 30
    assert thinning["steps"]["rows_kept"] == len(lens.records.steps) <= 16
    assert trainlens.load_run(run_dir).records.meta["thinning"] == thinning


def _diagnoses(lens) -> list[tuple]:
    return sorted((f.symptom, f.likely_cause, f.severity, f.module, f.step) for f in lens.findings)


@pytest.mark.parametrize(
    "program",
    ["shape_mismatch_example", "silent_broadcast", "short_run"],
)
def test_sampling_and_thinning_do_not_change_any_diagnosis(program, tmp_path, monkeypatch):
    def run(where):
        if program == "shape_mismatch_example":
            try:
                return load_example("shape_mismatch.py").main(run_dir=where)
            except RuntimeError:
                return None
        if program == "silent_broadcast":
            model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
            x, y = torch.randn(32, 4), torch.randn(32)  # y is [N], the output [N, 1]
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            with trainlens.watch(model, opt, run_dir=where, quiet=True) as lens:
                for _ in range(30):
                    loss = nn.MSELoss()(model(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            return lens
        return PROGRAMS[program](where)

    def findings_of(where):
        lens = run(where)
        if lens is None:  # the example re-raised its crash after writing the drill
            return sorted(
                (f.symptom, f.likely_cause, f.severity, f.module, f.step)
                for f in trainlens.load_run(where).findings
            )
        return _diagnoses(lens)

    torch.manual_seed(0)
    default = findings_of(tmp_path / "default")
    # every step sampled, then few sampled steps with the tables squeezed hard
    with monkeypatch.context() as m:
        m.setattr("trainlens._watch.Sampling", lambda every: Sampling(every=1, dense_steps=0))
        torch.manual_seed(0)
        assert findings_of(tmp_path / "dense") == default
    with monkeypatch.context() as m:
        m.setattr("trainlens._watch.Sampling", lambda every: Sampling(every=7, dense_steps=3))
        m.setattr(_records, "DEFAULT_THINNING", Thinning(head_steps=5, max_rows=48))
        torch.manual_seed(0)
        assert findings_of(tmp_path / "sparse") == default


def test_steady_state_flushes_bring_every_loss_and_leave_the_sampled_statistics_to_batch(run_dir):
    # the losses reach the host at every flush (the NaN alarm and the checkpoint read
    # them as the run goes); the statistics of the few steps sampled between two flushes
    # of the steady state wait for a full one, and the block's end reads them all
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = classification_data()
    sampling = Sampling()
    seen: dict[int, tuple[int, set[int]]] = {}
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        tables = lens._state.tables
        for step in range(420):
            loss = nn.functional.cross_entropy(model(x[:16]), y[:16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if (step + 1) % sampling.flush_every == 0:
                seen[step + 1] = (tables["losses"].seen, set(tables["params"].frame()["step"]))
    sampled = {s for s in range(420) if sampling(s)}
    for at, (losses, params_steps) in seen.items():
        assert losses == at  # every loss so far, at every flush
        assert params_steps <= {s for s in sampled if s < at}
    # the first flush reads back the first steps' statistics (22 steps sampled); the next
    # ones bring the losses alone until 10 sampled steps wait (200 steps at one in 20)
    assert seen[50][1] == seen[150][1] == {s for s in sampled if s < 50}
    assert seen[200][1] == seen[350][1] == {s for s in sampled if s < 200}
    assert seen[400][1] == {s for s in sampled if s < 400}
    assert set(lens.records.params["step"]) == sampled  # the end reads back the rest
