"""The catalogue is data; rules are plugins. Every cause has a rule and a test."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import trainlens
from models import classification_data, mlp, train
from trainlens._catalogue import load_catalogue
from trainlens._finding import Cause
from trainlens._plugins import DEFAULT_PLUGINS, catalogue_for, get_plugin_manager
from trainlens._resources import data_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
RULES = Path(trainlens.__file__).parent / "_rules"
SPEC_SYMPTOMS = {
    "shape_mismatch", "flat_loss", "diverging", "non_finite", "overfitting", "oom",
    "confusing_attention",
}  # fmt: skip


def _rule_modules() -> dict[str, types.ModuleType]:
    """The built-in rule plugins, by module name (`trainlens._rules.<symptom>`)."""
    return {
        name.rpartition(".")[2]: importlib.import_module(name)
        for name in DEFAULT_PLUGINS
        if name.startswith("trainlens._rules.")
    }


def _source(module: types.ModuleType) -> str:
    """A rule module's source and that of the private `_rules` helpers it uses."""
    helpers = [
        v
        for v in vars(module).values()
        if isinstance(v, types.ModuleType) and v.__name__.startswith("trainlens._rules._")
    ]
    return "\n".join(inspect.getsource(m) for m in [module, *helpers])


def _catalogue():
    return catalogue_for(get_plugin_manager(entry_points=False))


def test_every_recipe_is_a_spec_symptom_with_one_file_and_one_rule_module():
    cat = _catalogue()
    assert set(cat.symptoms) <= SPEC_SYMPTOMS
    rules = _rule_modules()
    for symptom, entry in cat.symptoms.items():
        assert entry.source == f"{symptom}.toml"
        assert symptom in rules, f"no rule module for {symptom}"
    known = {c for e in cat.symptoms.values() for c in e.causes}
    for name, module in rules.items():  # one file per symptom, named after it
        if module.SYMPTOM is None:  # a cross-symptom rule borrows causes, owns no recipe
            assert module.BORROWS and known >= module.BORROWS, f"_rules/{name}.py borrows"
            continue
        assert name == module.SYMPTOM, f"_rules/{name}.py diagnoses {module.SYMPTOM}"
    helpers = [p.stem for p in RULES.glob("*.py") if p.stem not in rules]
    assert all(h.startswith("_") for h in helpers), f"rule modules not registered: {helpers}"


#: record views the rules call, and the tables each reads
_VIEW_TABLES = {
    "train_loss": {"losses"},
    "val_loss": {"losses"},
    "param_stats": {"params"},
    "leaf_activations": {"activations"},
    "activations": {"activations"},
    "constant_baseline": {"loss_inputs"},
}


def test_every_table_a_rule_reads_is_named_in_its_recipe_and_written_by_a_probe():
    """A finding is qualified when a probe writing a table its symptom reads stops
    (`_incomplete.py`): that needs `reads` complete and every table's writer known."""
    from trainlens._probes import DEFAULT_PROBES
    from trainlens._records import TABLES

    cat = _catalogue()
    for name, module in _rule_modules().items():
        if module.SYMPTOM is None:
            continue
        source = Path(module.__file__).read_text(encoding="utf-8")
        read = set(re.findall(r"records\.(\w+)\b(?!\()", source)) & set(TABLES)
        read |= set(re.findall(r'records\.table\("(\w+)"\)', source))
        for view, tables in _VIEW_TABLES.items():
            if re.search(rf"\b{view}\(", source):
                read |= tables
        assert read <= set(cat[module.SYMPTOM].reads), (name, read - set(cat[name].reads))
    written = {t for cls in DEFAULT_PROBES for t in cls.writes}
    assert written <= set(TABLES)
    # `events` is written by the run's state for every probe (a stop included)
    read_anywhere = {t for e in cat.symptoms.values() for t in e.reads}
    assert read_anywhere - {"events"} <= written


def test_a_recipe_naming_an_unknown_table_is_refused(tmp_path):
    recipe = (data_dir("recipes") / "overfitting.toml").read_text(encoding="utf-8")
    (tmp_path / "overfitting.toml").write_text(
        recipe.replace('reads = ["losses",', 'reads = ["loses",'), encoding="utf-8"
    )
    with pytest.raises(trainlens.CatalogueError, match="loses"):
        load_catalogue([tmp_path])


def test_every_cause_is_owned_by_its_symptoms_rule_and_expected_by_a_test():
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    rules = _rule_modules()
    for symptom, entry in _catalogue().symptoms.items():
        owned = rules[symptom].CAUSES
        assert set(entry.causes) == set(owned), (
            f"recipe {symptom}.toml and _rules/{symptom}.py CAUSES differ: "
            f"{sorted(set(entry.causes) ^ set(owned))}"
        )
        for cause in entry.causes:
            assert re.search(rf'["\']{cause}["\']', tests), f"no test expects cause {cause}"


def test_recipe_causes_produce_only_known_causes():
    cat = _catalogue()
    known = {c for e in cat.symptoms.values() for c in e.causes}
    for entry in cat.symptoms.values():
        for cause in entry.causes.values():
            assert set(cause.produces) <= known, f"{cause.id} produces unknown causes"
            assert not (cause.fallback and cause.produces), f"{cause.id}: a fallback is no root"


def test_recipe_texts_only_use_fields_the_rules_fill():
    # a `{field}` left in a drill would read as a bug; the rules pass these names
    rules = _rule_modules()
    for symptom, entry in _catalogue().symptoms.items():
        rule = _source(rules[symptom])
        for cause in entry.causes.values():
            texts = [cause.first_check, cause.fix_attempt, cause.evidence, *cause.texts.values()]
            for name in re.findall(r"\{(\w+)\}", "".join(texts)):
                filled = f"{name}=" in rule or f'"{name}":' in rule  # keyword or dict key
                assert name in ("module", "step") or filled, (
                    f"{symptom}.{cause.id} uses {{{name}}} that {symptom}.py never fills"
                )
        for key, text in entry.texts.items():  # the symptom's own texts
            for name in re.findall(r"\{(\w+)\}", text):
                assert f"{name}=" in rule, f"{symptom} [texts] {key} uses {{{name}}} never filled"


# --- the words live in the recipes (issue 17 §4) -------------------------------------------
#: a string in a rule module with this many words is a sentence: it belongs in a recipe,
#: and the rule passes its numbers and names as fields
PROSE_WORDS = 2
#: a word: letters, maybe a possessive, maybe punctuation around it (not `grad_norm`, `x.T`)
_WORD = re.compile(r"^\(?[A-Za-z][a-z]+(?:'[a-z]+)?[,.;:!?)]*$")
#: strings a rule module may keep although they read like words: (file, string) -> why
PROSE_ALLOWED: dict[tuple[str, str], str] = {
    ("flat_loss.py", "backward passes"): "the unit of a curve read per backward pass when "
    "the optimizer never stepped: a value of the finding's evidence (`curve_by`), as `steps`",
    ("shape_mismatch.py", "output of "): "how the batch-dependency probe names the activation "
    "it probed (`_probes/_batch_dependency.py`): read from the records, never shown as is",
}


def _rule_trees() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(RULES.glob("*.py"))}


def _strings(tree: ast.Module) -> list[tuple[int, str]]:
    """Every string a module builds, f-strings whole (a placeholder per field), left out:
    docstrings and the patterns of `re` calls (they read other programs' messages)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            skip.add(id(body[0].value))  # a docstring (or a bare expression: no output)
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Attribute) and ast.unparse(func.value) == "re":
            skip.update(id(n) for arg in node.args for n in ast.walk(arg))
        if isinstance(node, ast.JoinedStr):
            skip.update(id(n) for n in ast.walk(node) if n is not node)
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            parts = [v.value if isinstance(v, ast.Constant) else "{}" for v in node.values]
            out.append((node.lineno, "".join(parts)))
    return out


def _words(text: str) -> int:
    return sum(1 for token in text.split() if _WORD.match(token))


def test_rule_modules_hold_no_sentences_the_recipes_supply_the_words():
    found = [
        f"_rules/{name}:{line}: {text!r}"
        for name, tree in _rule_trees().items()
        for line, text in _strings(tree)
        if _words(text) >= PROSE_WORDS and (name, text) not in PROSE_ALLOWED
    ]
    assert not found, "words belong in recipes/*.toml (catalogue.text):\n" + "\n".join(found)


def test_the_prose_check_sees_a_sentence_and_lets_keys_and_code_pass():
    tree = ast.parse(
        '"""A docstring may say anything at all."""\n'
        "import re\n"
        'a = f"{n} of {m} parameters never changed"\n'
        'b = "the loss went up"\n'
        'c = ("grads_cleared_before_step", "backward(), zero_grad(), step()", "the model")\n'
        'd = re.compile(r"tried to allocate (\\d+)")\n'
    )
    found = [text for _, text in _strings(tree) if _words(text) >= PROSE_WORDS]
    assert found == ["{} of {} parameters never changed", "the loss went up", "the model"]


def _direct_evidence_texts() -> dict[str, set[str]]:
    """recipes/direct_evidence/*.toml: table -> the keys of its text sections."""
    out: dict[str, set[str]] = {}
    for path in (data_dir("recipes") / "direct_evidence").glob("*.toml"):
        for table, body in tomllib.loads(path.read_text(encoding="utf-8")).items():
            for section, value in body.items():
                if isinstance(value, dict) and section != "thresholds":
                    out.setdefault(table, set()).update(value)
    return out


def _key_patterns(node: ast.expr) -> list[str | ast.JoinedStr]:
    """The text keys a call argument can be: literals, both sides of `a if c else b`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _key_patterns(node.body) + _key_patterns(node.orelse)
    return [node] if isinstance(node, ast.JoinedStr) else []


def _produces(pattern: ast.JoinedStr, key: str, literals: set[str]) -> bool:
    """Whether the f-string can be `key` with each field one of the module's literals."""
    parts = [v.value if isinstance(v, ast.Constant) else None for v in pattern.values]

    def match(i: int, rest: str) -> bool:
        if i == len(parts):
            return rest == ""
        if parts[i] is not None:
            return rest.startswith(parts[i]) and match(i + 1, rest[len(parts[i]) :])
        return any(rest.startswith(v) and match(i + 1, rest[len(v) :]) for v in literals if v)

    return match(0, key)


def test_every_text_a_rule_names_is_in_a_recipe_and_every_recipe_text_is_used():
    """A misspelt key raises in the middle of a diagnosis; an unused text is dead weight.

    Text calls are the calls of `text`, `*.text` and `*_text`: their last positional
    argument is the key. `catalogue.text(SYMPTOM, "cause", key)` is checked against that
    cause's texts, `ctx.text("cause", key)` against the texts of any cause of that id (or
    direct-evidence table), and a helper's `text(key)` against every text of the recipes
    (the helper may add a prefix: `f"{case}_{key}"`). A key written as an f-string must
    come out as a text of the recipe with each field one of the module's own strings."""
    cat = _catalogue()
    exact: dict[tuple[str, str | None], set[str]] = {}
    owners: dict[str | None, set[str]] = {None: set()}
    for sid, entry in cat.symptoms.items():
        exact[(sid, None)] = set(entry.texts)
        owners[None] |= set(entry.texts)
        for cause in entry.causes.values():
            exact[(sid, cause.id)] = set(cause.texts)
            owners.setdefault(cause.id, set()).update(cause.texts)
    for table, keys in _direct_evidence_texts().items():
        owners.setdefault(table, set()).update(keys)
    everything = set().union(*owners.values())
    used: set[str] = set()
    wrong = []
    for name, tree in _rule_trees().items():
        module = importlib.import_module(f"trainlens._rules.{name[:-3]}")
        nodes = ast.walk(tree)
        literals = {
            n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
        used |= literals
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func, args = node.func, node.args
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called != "text" and not called.endswith("_text"):
                continue
            scope = everything
            if isinstance(func, ast.Attribute) and len(args) >= 3:
                first, cause = args[0], args[1]
                symptom = first.value if isinstance(first, ast.Constant) else None
                symptom = symptom or getattr(module, ast.unparse(first), None)
                if isinstance(cause, ast.Constant):
                    scope = exact.get((symptom, cause.value), set())
            elif len(args) == 2 and isinstance(args[0], ast.Constant):
                scope = owners.get(args[0].value, set())
            for key in _key_patterns(args[-1]):
                if isinstance(key, str) and len(args) == 1:
                    ok = any(k == key or k.endswith(f"_{key}") for k in scope)
                elif isinstance(key, str):
                    ok = key in scope
                else:
                    produced = {k for k in scope if _produces(key, k, literals)}
                    used |= produced
                    ok = bool(produced)
                if not ok:
                    wrong.append(f"_rules/{name}:{node.lineno}: {ast.unparse(node)[:100]}")
    assert not wrong, "text keys no recipe sets:\n" + "\n".join(wrong)
    unused = sorted(everything - used)
    assert not unused, f"recipe texts no rule uses: {unused}"


# --- ranking: roots before consequences, fallbacks last ----------------------------------
def _c(cause_id, confidence, onset=None):
    return Cause(id=cause_id, confidence=confidence, evidence=f"{cause_id} seen", onset=onset)


def test_a_consequence_whose_evidence_came_later_ranks_below_its_root():
    cat = _catalogue()
    assert "dead_relu" in cat.produces("zero_grad_missing")  # the recipe says so
    ranked = cat.rank([_c("dead_relu", 0.95, onset=30), _c("zero_grad_missing", 0.93, onset=1)])
    assert [c.id for c in ranked] == ["zero_grad_missing", "dead_relu"]
    assert ranked[1].confidence < ranked[0].confidence
    assert "likely a consequence of zero_grad_missing" in ranked[1].evidence
    assert "step 1" in ranked[1].evidence and "step 30" in ranked[1].evidence
    assert cat.rank(ranked) == ranked  # idempotent: merged findings are ranked again


def test_timing_decides_and_unknown_timing_changes_nothing():
    cat = _catalogue()
    # ReLUs dead from the start (a bad bias) before the gradients piled up: not a consequence
    early = cat.rank([_c("dead_relu", 0.95, onset=0), _c("zero_grad_missing", 0.93, onset=5)])
    assert early[0].id == "dead_relu" and "consequence" not in early[0].evidence
    unknown = cat.rank([_c("dead_relu", 0.95), _c("zero_grad_missing", 0.93, onset=5)])
    assert [c.confidence for c in unknown] == [0.95, 0.93]


def test_a_consequence_of_a_consequence_stays_below_both():
    cat = _catalogue()
    ranked = cat.rank([
        _c("no_gradient_flow", 0.9, onset=20), _c("dead_relu", 0.95, onset=10),
        _c("zero_grad_missing", 0.6, onset=1),
    ])  # fmt: skip
    assert [c.id for c in ranked] == ["zero_grad_missing", "dead_relu", "no_gradient_flow"]


def test_a_fallback_cause_ranks_below_every_specific_cause():
    cat = _catalogue()
    assert cat.is_fallback("label_mismatch") and cat.is_fallback("unknown")
    ranked = cat.rank([_c("label_mismatch", 0.8), _c("lr_too_low", 0.5)])
    assert [c.id for c in ranked] == ["lr_too_low", "label_mismatch"]
    assert cat.rank([_c("label_mismatch", 0.6)])[0].confidence == 0.6  # alone: unchanged


def test_a_finding_follows_its_new_top_cause():
    cat = _catalogue()
    f = cat.finding(
        "flat_loss",
        "error",
        [
            cat.cause("flat_loss", "dead_relu", confidence=0.95, evidence="dead", module="1",
                      onset=30, zero_pct="99%", module_type="ReLU"),
            cat.cause("flat_loss", "zero_grad_missing", confidence=0.93, evidence="stale",
                      onset=1),
        ],
    )  # fmt: skip
    assert f.likely_cause == "zero_grad_missing"
    assert "zero_grad()" in f.first_check and f.module is None


def test_a_bad_produces_list_is_reported_with_its_file(tmp_path):
    (tmp_path / "bad.toml").write_text(
        'symptom = "flat_loss"\n[causes.x]\ntitle = "t"\nfirst_check = "c"\n'
        'fix_attempt = "f"\nproduces = "dead_relu"\n'
    )
    with pytest.raises(trainlens.CatalogueError, match=r"bad.toml: \[causes.x\] produces"):
        load_catalogue([tmp_path])


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


def test_direct_evidence_added_to_a_diverging_finding_outranks_its_consequences(run_dir):
    # how the evidence branch's findings go through the ranking: a cause with its onset
    # (here: gradients carried over from step 1) joins the causes a symptom rule found
    model = mlp(hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    x, y = classification_data(n=512)
    crit = nn.CrossEntropyLoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for s in range(60):
            i = (s * 32) % 512
            crit(model(x[i : i + 32]), y[i : i + 32]).backward()  # no zero_grad()
            opt.step()
    diverging = next(f for f in lens.findings if f.symptom == "diverging")
    ranked = diverging.likely_causes
    assert ranked[0].id == "zero_grad_missing"  # direct evidence, from step 1
    exploding = next(c for c in ranked if c.id == "exploding_gradient")
    assert exploding.onset is not None and exploding.onset > 1  # the growth showed later
    assert "likely a consequence of zero_grad_missing" in exploding.evidence
