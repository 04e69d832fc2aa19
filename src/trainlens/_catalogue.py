"""The failure catalogue: recipes/<symptom>.toml read into plain, read-only objects.

Texts and thresholds live in the recipes; rules only decide. Each text may name fields in
braces (`{module}`, `{expected}`) that the rule fills from its evidence.
"""

from __future__ import annotations

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
    #: named text pieces (`[causes.<id>.texts]`) for rules whose story has variants
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

    def text(self, symptom: str, cause_id: str, name: str, **fields: Any) -> str:
        """A named text piece of a cause (`[causes.<id>.texts]`), filled in."""
        entry = self._cause(self[symptom], cause_id)
        try:
            return fill(entry.texts[name], fields)
        except KeyError:
            raise CatalogueError(
                f"recipe {self[symptom].source}: [causes.{cause_id}.texts] has no {name!r}"
            ) from None

    def cause(
        self,
        symptom: str,
        cause_id: str,
        *,
        confidence: float,
        evidence: str,
        module: str | None = None,
        step: int | None = None,
        **fields: Any,
    ) -> Cause:
        """A ranked cause whose first check and fix come from the recipe, filled in."""
        entry = self._cause(self[symptom], cause_id)
        fields = {"module": module if module is not None else "the model", "step": step, **fields}
        return Cause(
            id=cause_id,
            confidence=max(0.0, min(1.0, float(confidence))),
            evidence=evidence,
            module=module,
            step=step,
            first_check=fill(entry.first_check, fields),
            fix_attempt=fill(entry.fix_attempt, fields),
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
        """A finding whose where and what-to-do follow its most likely cause."""
        ranked = sorted(causes, key=lambda c: -c.confidence)
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
    )


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
            texts=MappingProxyType(
                {k: need(table["texts"], k, f"{where}.texts") for k in table.get("texts", {})}
            ),
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
    )
