"""The failure catalogue: recipes/<symptom>.toml read into plain, read-only objects.

Texts and thresholds live in the recipes; rules only decide. Each text may name fields in
braces (`{module}`, `{expected}`) that the rule fills from its evidence.

The recipes also say how causes relate, as data next to the thresholds: `produces` lists
the causes a cause can bring about (gradients piling up without `zero_grad` blow up the
updates, which kills ReLUs), and `fallback = true` marks a conclusion by elimination.
`Catalogue.rank` orders a finding's causes with both (see there); every finding built by
`Catalogue.finding` goes through it, and `rank_findings` re-ranks findings merged across
rules.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ._errors import CatalogueError
from ._finding import Cause, Finding

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_ID = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class CauseEntry:
    id: str
    title: str
    first_check: str
    fix_attempt: str
    thresholds: Mapping[str, Any] = field(default_factory=dict)
    #: cause ids this cause can bring about (in any symptom: ids keep their meaning)
    produces: tuple[str, ...] = ()
    #: a conclusion by elimination: ranks first only when no specific cause is present
    fallback: bool = False
    #: optional evidence template the rule fills with its numbers (`{field}`)
    evidence: str = ""
    #: further named texts a rule picks from by case (`[causes.<id>.texts]`)
    texts: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Symptom:
    id: str
    title: str
    summary: str
    first_check: str
    fix_attempt: str
    causes: Mapping[str, CauseEntry]
    thresholds: Mapping[str, Any]
    source: str
    #: named texts of the symptom itself, not of one cause (`[texts]`: how a curve looks)
    texts: Mapping[str, str] = field(default_factory=dict)
    #: the record tables its rule reads: a finding of it is qualified when a probe that
    #: writes one of them stopped during the run (`_incomplete.py`)
    reads: tuple[str, ...] = ()


class _Keep(dict):
    """format_map helper: an unknown `{field}` stays as written instead of raising."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill(text: str, fields: Mapping[str, Any]) -> str:
    return text.format_map(_Keep(fields)) if fields else text


class Catalogue:
    """All symptoms of the catalogue, and the helpers rules use to build findings."""

    def __init__(self, symptoms: Mapping[str, Symptom]):
        self.symptoms = MappingProxyType(dict(symptoms))

    def __contains__(self, symptom: str) -> bool:
        return symptom in self.symptoms

    def __getitem__(self, symptom: str) -> Symptom:
        try:
            return self.symptoms[symptom]
        except KeyError:
            raise CatalogueError(
                f"the catalogue has no symptom {symptom!r}; known: {sorted(self.symptoms)}"
            ) from None

    def threshold(self, symptom: str, name: str, cause: str | None = None) -> Any:
        """A cause's own threshold if it sets one, else the symptom's."""
        entry = self[symptom]
        if cause is not None and name in self._cause(entry, cause).thresholds:
            return entry.causes[cause].thresholds[name]
        try:
            return entry.thresholds[name]
        except KeyError:
            raise CatalogueError(
                f"recipe {entry.source} sets no threshold {name!r}"
                + (f" (nor does its cause {cause!r})" if cause else "")
            ) from None

    def text(self, symptom: str, cause_id: str | None, key: str, **fields: Any) -> str:
        """One of a cause's named `texts` from the recipe, filled in; with `cause_id`
        None, one of the symptom's own (`[texts]`)."""
        entry = self[symptom]
        texts = entry.texts if cause_id is None else self._cause(entry, cause_id).texts
        try:
            return fill(texts[key], fields)
        except KeyError:
            owner = "" if cause_id is None else f" for cause {cause_id!r}"
            raise CatalogueError(f"recipe {entry.source} sets no text {key!r}{owner}") from None

    def cause(
        self,
        symptom: str,
        cause_id: str,
        *,
        confidence: float,
        evidence: str | None = None,
        module: str | None = None,
        step: int | None = None,
        onset: int | None = None,
        **fields: Any,
    ) -> Cause:
        """A ranked cause whose first check and fix come from the recipe, filled in.

        `evidence` defaults to the recipe's evidence template filled with `fields`;
        `onset` is the first step at which the evidence shows (for `rank`).
        """
        entry = self._cause(self[symptom], cause_id)
        fields = {"module": module if module is not None else "the model", "step": step, **fields}
        if evidence is None:
            if not entry.evidence:
                raise CatalogueError(
                    f"recipe {self[symptom].source}: cause {cause_id!r} has no evidence "
                    "template and the rule gave no evidence"
                )
            evidence = fill(entry.evidence, fields)
        return Cause(
            id=cause_id,
            confidence=max(0.0, min(1.0, float(confidence))),
            evidence=evidence,
            module=module,
            step=step,
            first_check=fill(entry.first_check, fields),
            fix_attempt=fill(entry.fix_attempt, fields),
            onset=onset,
        )

    # --- ranking --------------------------------------------------------------------------
    def produces(self, cause_id: str) -> frozenset[str]:
        """Every cause `cause_id` can bring about, directly or through others."""
        direct: dict[str, set[str]] = {}
        for entry in self.symptoms.values():
            for c in entry.causes.values():
                direct.setdefault(c.id, set()).update(c.produces)
        seen: set[str] = set()
        todo = list(direct.get(cause_id, ()))
        while todo:
            nxt = todo.pop()
            if nxt not in seen:
                seen.add(nxt)
                todo.extend(direct.get(nxt, ()))
        return frozenset(seen)

    def is_fallback(self, cause_id: str) -> bool:
        return any(
            c.fallback for e in self.symptoms.values() if (c := e.causes.get(cause_id)) is not None
        )

    def rank(self, causes: Iterable[Cause]) -> list[Cause]:
        """Causes most likely first: roots before their consequences, fallbacks last.

        1. A cause B is a consequence of another present cause A when the recipes say A
           `produces` B (directly or through others) and the records' timing agrees: both
           `onset` steps are known and A's evidence showed no later than B's (strictly
           earlier when each can produce the other). B is then kept, ranked just below
           A (confidence at most A's minus `GAP`), its evidence saying so. Unknown timing
           changes nothing: the rules' own confidences stand.
        2. A `fallback` cause (a conclusion by elimination) ranks below every specific
           cause present.
        Then by confidence, highest first. Pure and idempotent: re-ranking a ranked list
        (e.g. after findings of several rules are merged) gives the same list.
        """
        out = list(causes)
        conf = [c.confidence for c in out]
        roots_of: dict[int, list[int]] = {}
        for i, b in enumerate(out):
            roots = [j for j, a in enumerate(out) if j != i and self._is_root(a, b)]
            if roots:
                roots_of[i] = roots

        def settle(i: int, depth: int = 0) -> float:
            if depth > len(out):  # cannot happen (timing orders the roots); never loop
                return conf[i]
            above = [settle(j, depth + 1) - GAP for j in roots_of.get(i, ())]
            return max(0.0, min([conf[i], *above]))

        ranked = []
        for i, c in enumerate(out):
            if i not in roots_of:
                ranked.append(c)
                continue
            # named: the earliest root, the one the chain starts from
            a = out[min(roots_of[i], key=lambda j: (out[j].onset, -out[j].confidence))]
            note = CONSEQUENCE_NOTE.format(root=a.id, root_step=a.onset, step=c.onset)
            evidence = c.evidence if note in c.evidence else f"{c.evidence}; {note}"
            ranked.append(dataclasses.replace(c, confidence=settle(i), evidence=evidence))
        specific = [c.confidence for c in ranked if not self.is_fallback(c.id)]
        if specific:
            floor = max(0.0, min(specific) - GAP)
            ranked = [
                dataclasses.replace(c, confidence=min(c.confidence, floor))
                if self.is_fallback(c.id)
                else c
                for c in ranked
            ]
        return sorted(ranked, key=lambda c: -c.confidence)

    def _is_root(self, a: Cause, b: Cause) -> bool:
        if a.id == b.id or b.id not in self.produces(a.id):
            return False
        if a.onset is None or b.onset is None:
            return False
        if a.id in self.produces(b.id):  # each can produce the other: timing alone decides
            return a.onset < b.onset
        return a.onset <= b.onset

    def rank_finding(self, finding: Finding) -> Finding:
        """The finding with its causes re-ranked (its where/what-to-do follow the top)."""
        ranked = self.rank(finding.likely_causes)
        if ranked == list(finding.likely_causes):  # a consequence's note changes evidence too
            return finding
        top = ranked[0]
        if top.id == finding.top.id:
            return dataclasses.replace(finding, likely_causes=ranked)
        return dataclasses.replace(
            finding,
            likely_causes=ranked,
            first_check=top.first_check or finding.first_check,
            fix_attempt=top.fix_attempt or finding.fix_attempt,
            module=top.module if top.module is not None else finding.module,
        )

    def finding(
        self,
        symptom: str,
        severity: str,
        causes: Iterable[Cause],
        *,
        evidence: Mapping[str, Any] | None = None,
        module: str | None = None,
        step: int | None = None,
    ) -> Finding:
        """A finding whose where and what-to-do follow its most likely cause (`rank`)."""
        ranked = self.rank(causes)
        if not ranked:
            raise ValueError(f"a {symptom} finding needs at least one cause")
        top = ranked[0]
        entry = self[symptom]
        return Finding(
            symptom=symptom,
            severity=severity,
            likely_causes=ranked,
            first_check=top.first_check or entry.first_check,
            fix_attempt=top.fix_attempt or entry.fix_attempt,
            module=module if module is not None else top.module,
            step=step if step is not None else top.step,
            evidence=dict(evidence or {}),
        )

    @staticmethod
    def _cause(entry: Symptom, cause_id: str) -> CauseEntry:
        try:
            return entry.causes[cause_id]
        except KeyError:
            raise CatalogueError(
                f"recipe {entry.source} has no cause {cause_id!r}; known: {sorted(entry.causes)}"
            ) from None


#: how far below its root a consequence is ranked
GAP = 0.05
CONSEQUENCE_NOTE = (
    "likely a consequence of {root} (its evidence from step {root_step}, this from step {step})"
)


def rank_findings(findings: Iterable[Finding], catalogue: Catalogue) -> list[Finding]:
    """Every finding re-ranked: for findings merged across rules (`merge_findings`).

    A finding that rests on fallbacks alone (a conclusion by elimination, or "no cause
    found") is dropped when another finding is an error with a specific cause: that
    cause is the explanation to check first, and a "not sure" beside it only blurs it.
    """
    ranked = [_across_findings(catalogue.rank_finding(f), findings, catalogue) for f in findings]
    specific = any(f.severity == "error" and not catalogue.is_fallback(f.top.id) for f in ranked)
    if not specific:
        return ranked
    return [f for f in ranked if any(not catalogue.is_fallback(c.id) for c in f.likely_causes)]


def _across_findings(
    finding: Finding, findings: Iterable[Finding], catalogue: Catalogue
) -> Finding:
    """A warning whose first cause another finding's error cause can produce, and whose
    evidence came no earlier (zero_grad_missing under flat_loss, then a loss that swings:
    lr_too_high under diverging), says so: the user fixes the root first."""
    if finding.severity != "warning":
        return finding
    top = finding.top
    for other in findings:
        root = other.top
        if other is finding or other.severity != "error":
            continue
        if top.id not in catalogue.produces(root.id):
            continue
        if root.onset is not None and top.onset is not None and root.onset > top.onset:
            continue  # the timing says this came first
        note = f"likely a consequence of {root.id} (the {other.symptom} finding)"
        if note in top.evidence:
            return finding
        causes = [dataclasses.replace(top, evidence=f"{top.evidence}; {note}")]
        return dataclasses.replace(finding, likely_causes=[*causes, *finding.likely_causes[1:]])
    return finding


def load_catalogue(dirs: Iterable[Path]) -> Catalogue:
    """Read every `*.toml` of the given folders; later folders extend earlier ones."""
    symptoms: dict[str, Symptom] = {}
    for folder in dirs:
        for path in sorted(Path(folder).glob("*.toml")):
            entry = _parse_recipe(path)
            symptoms[entry.id] = _extend(symptoms.get(entry.id), entry)
    return Catalogue(symptoms)


def _extend(base: Symptom | None, extra: Symptom) -> Symptom:
    """A team's recipe for a known symptom adds causes and overrides thresholds."""
    if base is None:
        return extra
    return Symptom(
        id=base.id,
        title=base.title,
        summary=base.summary,
        first_check=base.first_check,
        fix_attempt=base.fix_attempt,
        causes=MappingProxyType({**base.causes, **extra.causes}),
        thresholds=MappingProxyType({**base.thresholds, **extra.thresholds}),
        source=f"{base.source} + {extra.source}",
        texts=MappingProxyType({**base.texts, **extra.texts}),
        reads=tuple(dict.fromkeys((*base.reads, *extra.reads))),
    )


def _ids(value: Any, path: Path, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and _ID.match(v) for v in value):
        raise CatalogueError(f"recipe {path}: {where} must be a list of snake_case cause ids")
    return tuple(value)


def _parse_recipe(path: Path) -> Symptom:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogueError(f"cannot read recipe {path}: {exc}") from exc

    def need(table: Mapping[str, Any], key: str, where: str) -> str:
        value = table.get(key)
        if not isinstance(value, str) or not value.strip():
            raise CatalogueError(f"recipe {path}: {where} needs a non-empty string {key!r}")
        return value.strip()

    symptom = need(data, "symptom", "the top level")
    if not _ID.match(symptom):
        raise CatalogueError(f"recipe {path}: symptom id {symptom!r} is not snake_case")
    raw_causes = data.get("causes")
    if not isinstance(raw_causes, dict) or not raw_causes:
        raise CatalogueError(f"recipe {path}: needs at least one [causes.<id>] table")
    causes = {}
    for cause_id, table in raw_causes.items():
        if not _ID.match(cause_id):
            raise CatalogueError(f"recipe {path}: cause id {cause_id!r} is not snake_case")
        where = f"[causes.{cause_id}]"
        causes[cause_id] = CauseEntry(
            id=cause_id,
            title=need(table, "title", where),
            first_check=need(table, "first_check", where),
            fix_attempt=need(table, "fix_attempt", where),
            thresholds=MappingProxyType(dict(table.get("thresholds", {}))),
            produces=_ids(table.get("produces", []), path, f"{where} produces"),
            fallback=bool(table.get("fallback", False)),
            evidence=str(table.get("evidence", "")).strip(),
            texts=_texts(table),
        )
    return Symptom(
        id=symptom,
        title=data.get("title", symptom).strip(),
        summary=data.get("summary", "").strip(),
        first_check=data.get("first_check", "").strip() or next(iter(causes.values())).first_check,
        fix_attempt=data.get("fix_attempt", "").strip() or next(iter(causes.values())).fix_attempt,
        causes=MappingProxyType(causes),
        thresholds=MappingProxyType(dict(data.get("thresholds", {}))),
        source=path.name,
        texts=_texts(data),
        reads=_table_names(data.get("reads", []), path),
    )


def _table_names(value: Any, path: Path) -> tuple[str, ...]:
    from ._records import TABLES

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogueError(f"recipe {path}: reads must be a list of record table names")
    unknown = sorted(set(value) - set(TABLES))
    if unknown:
        raise CatalogueError(
            f"recipe {path}: reads names no record table {unknown}; known: {sorted(TABLES)}"
        )
    return tuple(value)


def _texts(table: Mapping[str, Any]) -> Mapping[str, str]:
    return MappingProxyType({k: str(v).strip() for k, v in table.get("texts", {}).items()})
