"""The words of direct evidence (`recipes/direct_evidence/*.toml`), and the evidence both
`direct_evidence` and `flat_loss` read: layers the forward runs without owning them.

Each table there is a way a catalogue cause shows; a cause built from one keeps its
catalogue id and takes that table's first check and fix.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

from .._catalogue import Catalogue, fill
from .._finding import Cause
from .._records import Records
from .._resources import data_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: the symptom family of every cause found from direct evidence (SPEC §3: flat_loss causes)
HOME = "flat_loss"


@functools.cache
def texts() -> dict[str, Any]:
    """Every table of `recipes/direct_evidence/*.toml`, by name."""
    tables: dict[str, Any] = {}
    for path in sorted((data_dir("recipes") / "direct_evidence").glob("*.toml")):
        tables.update(tomllib.loads(path.read_text(encoding="utf-8")))
    return tables


def text(table: str, key: str, *, section: str = "texts", **fields: Any) -> str:
    """`[<table>.<section>]`'s text `key`, filled in (spaces as in first_check)."""
    return fill(" ".join(texts()[table][section][key].split()), fields)


def variant(
    catalogue: Catalogue,
    key: str,
    confidence: float,
    evidence: str,
    *,
    step: Any = None,
    module: str | None = None,
    **fields: Any,
) -> Cause | None:
    """The catalogue cause of this evidence, with the evidence's own first check and fix."""
    table = texts()[key]
    cause_id = table["cause"]
    if cause_id not in catalogue[HOME].causes:
        return None
    cause = catalogue.cause(
        HOME,
        cause_id,
        confidence=confidence,
        evidence=evidence,
        module=module,
        step=None if step is None else int(step),
    )
    values = {"module": module or catalogue.text(HOME, None, "the_model"), "step": step, **fields}
    return dataclasses.replace(
        cause,
        first_check=fill(" ".join(table["first_check"].split()), values),
        fix_attempt=fill(" ".join(table["fix_attempt"].split()), values),
    )


def unregistered_layers(records: Records, catalogue: Catalogue) -> Cause | None:
    """`params_not_in_optimizer`: layers with trainable weights that the model's forward
    runs without owning them (a plain list or dict instead of `nn.ModuleList`, or a layer
    made inside `forward()`), left out of the optimizer: they never train."""
    found = [
        m
        for m in records.meta.get("unregistered_modules") or []
        if m.get("params") and m.get("in_optimizer") is not True
    ]
    if not found:
        return None
    say = functools.partial(text, "unregistered_layers")
    named = [f"`{m['where']}` ({m['type']})" for m in found if m.get("where")]
    made = [m for m in found if not m.get("where")]
    names = ", ".join(named[:4])
    if len(named) > 4:
        names = say("more", names=names, more=len(named) - 4)
    if made:
        kinds = ", ".join(sorted({m["type"] for m in made}))
        made_names = say("made_names", kinds=kinds, seen=len(made))
        names = f"{names}, {made_names}" if names else made_names
    evidence = say(
        "evidence",
        count=len(found),
        names=names,
        numel=sum(int(m["params"]) for m in found),
        how=say("in_list") if named else say("made"),
    )
    key = "unregistered_layers" if named else "made_in_forward"
    return variant(catalogue, key, 0.9, evidence, names=names)
