"""The catalogue is data; rules are plugins. Every cause has a rule and a test."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import trainlens
from models import classification_data, mlp, train
from trainlens._catalogue import load_catalogue
from trainlens._plugins import catalogue_for, get_plugin_manager
from trainlens._resources import data_dir

ROOT = Path(__file__).resolve().parents[1]
RULES = Path(trainlens.__file__).parent / "_rules"
SPEC_SYMPTOMS = {
    "shape_mismatch", "flat_loss", "diverging", "non_finite", "overfitting", "oom",
    "confusing_attention",
}  # fmt: skip


def _rule_text(symptom: str) -> str:
    """The symptom's own rule module, plus any other that diagnoses causes of it
    (declares `SYMPTOM = "<symptom>"`, e.g. `initial_loss.py` for `flat_loss`)."""
    own = RULES / f"{symptom}.py"
    others = [
        p.read_text()
        for p in sorted(RULES.glob("*.py"))
        if p != own and f'SYMPTOM = "{symptom}"' in p.read_text()
    ]
    return "\n".join([own.read_text(), *others])


def _catalogue():
    return catalogue_for(get_plugin_manager(entry_points=False))


def test_every_recipe_is_a_spec_symptom_with_one_file_and_one_rule_module():
    cat = _catalogue()
    assert set(cat.symptoms) <= SPEC_SYMPTOMS
    for symptom, entry in cat.symptoms.items():
        assert entry.source == f"{symptom}.toml"
        assert (RULES / f"{symptom}.py").is_file(), f"no rule module for {symptom}"


def test_every_cause_has_a_rule_that_names_it_and_a_test_that_expects_it():
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for symptom, entry in _catalogue().symptoms.items():
        rule = _rule_text(symptom)
        for cause in entry.causes:
            assert f'"{cause}"' in rule, f"rule {symptom}.py never names cause {cause}"
            assert re.search(rf'["\']{cause}["\']', tests), f"no test expects cause {cause}"


def test_recipe_texts_only_use_fields_the_rules_fill():
    # a `{field}` left in a drill would read as a bug; the rules pass these names
    for symptom, entry in _catalogue().symptoms.items():
        rule = _rule_text(symptom)
        for cause in entry.causes.values():
            for name in re.findall(r"\{(\w+)\}", cause.first_check + cause.fix_attempt):
                assert name in ("module", "step") or f"{name}=" in rule, (
                    f"{symptom}.{cause.id} uses {{{name}}} that {symptom}.py never fills"
                )


def test_a_malformed_recipe_is_reported_with_its_file(tmp_path):
    (tmp_path / "bad.toml").write_text('symptom = "flat_loss"\n[causes.x]\ntitle = "t"\n')
    with pytest.raises(trainlens.CatalogueError, match=r"bad.toml: \[causes.x\] needs"):
        load_catalogue([tmp_path])
    (tmp_path / "bad.toml").write_text("symptom = [")
    with pytest.raises(trainlens.CatalogueError, match="cannot read recipe"):
        load_catalogue([tmp_path])


def test_unknown_threshold_or_cause_names_the_recipe():
    cat = _catalogue()
    with pytest.raises(trainlens.CatalogueError, match="sets no threshold 'nope'"):
        cat.threshold("shape_mismatch", "nope")
    with pytest.raises(trainlens.CatalogueError, match="has no cause 'nope'"):
        cat.cause("shape_mismatch", "nope", confidence=1, evidence="x")


class LossAboveOne:
    """A team's own rule: flags any run whose final loss is above 1."""

    @trainlens.hookimpl
    def trainlens_diagnose(self, records, catalogue):
        last = records.train_loss().iloc[-1]
        if last <= 1:
            return []
        cause = catalogue.cause(
            "flat_loss", "team_loss_above_one", confidence=0.4, evidence=f"final loss {last:.2f}"
        )
        return [catalogue.finding("flat_loss", "warning", [cause])]

    @trainlens.hookimpl
    def trainlens_catalogue_dirs(self):
        return [self.recipes]


def test_a_team_adds_its_own_recipe_and_rule_without_touching_trainlens(tmp_path, run_dir):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "flat_loss.toml").write_text(
        'symptom = "flat_loss"\n'
        "[causes.team_loss_above_one]\n"
        'title = "Loss above one"\n'
        'first_check = "Print the loss of `{module}`"\n'
        'fix_attempt = "Train longer"\n'
    )
    plugin = LossAboveOne()
    plugin.recipes = recipes
    model = nn.Linear(8, 3)
    with torch.no_grad():
        model.weight.mul_(3)  # a loss above 1 that 3 tiny steps cannot fix (x50 would be a
        # bad_initial_loss finding of its own, ranked above the team cause)
    lens = train(model, classification_data(), steps=3, lr=1e-6, run_dir=run_dir, plugins=[plugin])
    found = [f for f in lens.findings if f.likely_cause == "team_loss_above_one"]
    assert len(found) == 1
    assert found[0].first_check == "Print the loss of `the model`"
    assert lens.drill["status"] == "warning"  # a warning does not fail the run


def test_a_broken_plugin_rule_is_skipped_with_a_warning(run_dir):
    class Broken:
        @trainlens.hookimpl
        def trainlens_diagnose(self, records):
            raise KeyError("oops")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lens = train(mlp(), classification_data(), steps=3, run_dir=run_dir, plugins=[Broken()])
    assert any("failed and was skipped: KeyError" in str(w.message) for w in caught)
    assert lens.drill["status"] == "healthy"


def test_a_report_plugin_adds_a_section_to_drill_md(run_dir):
    class Section:
        @trainlens.hookimpl
        def trainlens_report_sections(self, drill, records):
            return [("Team notes", f"{len(records.losses)} losses seen in {drill['run_id']}")]

    lens = train(mlp(), classification_data(), steps=3, run_dir=run_dir, plugins=[Section()])
    md = (run_dir / "drill.md").read_text()
    assert f"## Team notes\n\n3 losses seen in {lens.run_id}" in md
    assert md.index("## Shape trace") < md.index("## Team notes")  # built-ins first


def test_recipes_folder_is_the_one_in_the_repository_for_an_editable_install():
    assert data_dir("recipes").resolve() in (
        ROOT / "recipes",
        Path(trainlens.__file__).parent / "recipes",
    )


def test_a_report_plugin_writes_its_own_file_before_drill_md(run_dir):
    class Picture:
        @trainlens.hookimpl
        def trainlens_artifacts(self, run_dir, records):
            assert not (run_dir / "drill.md").exists()  # sections can still link the file
            (run_dir / "losses.txt").write_text(str(len(records.losses)))
            return ["losses.txt"]

    train(mlp(), classification_data(), steps=4, run_dir=run_dir, plugins=[Picture()])
    assert (run_dir / "losses.txt").read_text() == "4"
