"""The plugin manager: built-in rules and sections first, then entry points, then extras."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pluggy

from . import _hookspecs
from ._catalogue import Catalogue, load_catalogue, rank_findings
from ._finding import Finding, merge_findings
from ._incomplete import qualify
from ._records import Records
from ._resources import data_dir

#: trainlens's own plugins, registered like any third-party one (datasette's habit)
DEFAULT_PLUGINS = (
    "trainlens._rules.shape_mismatch",
    "trainlens._rules.flat_loss",
    "trainlens._rules.confusing_attention",
    "trainlens._rules.oom",
    "trainlens._rules.diverging",
    "trainlens._rules.non_finite",
    "trainlens._rules.overfitting",
    "trainlens._rules.direct_evidence",
    "trainlens._report.sections",
    "trainlens._report.runtime",
    "trainlens._report.attention",
    "trainlens._report.memory",
    "trainlens._report.curves",
    "trainlens._report.html",
    "trainlens._report.readme",
)


def get_plugin_manager(
    plugins: Iterable[Any] = (), *, entry_points: bool = True
) -> pluggy.PluginManager:
    """A fresh manager. Tests pass `entry_points=False` to stay hermetic."""
    pm = pluggy.PluginManager(_hookspecs.PROJECT)
    pm.add_hookspecs(_hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if entry_points:
        pm.load_setuptools_entrypoints(_hookspecs.PROJECT)
    for plugin in plugins:
        if pm.is_registered(plugin):
            continue
        pm.register(plugin)
    return pm


def catalogue_for(pm: pluggy.PluginManager) -> Catalogue:
    extra = [d for dirs in pm.hook.trainlens_catalogue_dirs() for d in (dirs or [])]
    return load_catalogue([data_dir("recipes"), *extra])


#: what a failing implementation of each hook costs, for its warning and the drill
_WHAT = {
    "trainlens_diagnose": "rule {name!r} failed and was skipped",
    "trainlens_artifacts": "report plugin {name!r} could not write its files",
    "trainlens_report_sections": "report section plugin {name!r} failed and was left out",
    "trainlens_drill_fields": "drill-field plugin {name!r} failed and its fields were left out",
}


def call_each(
    pm: pluggy.PluginManager,
    hook: str,
    failures: list[dict[str, str]] | None = None,
    *,
    skip: Iterable[str] = (),
    **offered: Any,
) -> list[Any]:
    """Call every implementation of `hook` on its own, in registration order (built-ins
    first; `trylast` ones at the end), and return their results.

    The one failure policy of trainlens's plugin calls: an implementation that raises
    is skipped and the others still run; the failure is appended to `failures` (the
    drill lists them under `plugin_errors`, and the caller names them in its one
    warning), or, without a `failures` list, a RuntimeWarning names it at once. A broken
    third-party rule, artifact or report section never breaks the user's run.
    """
    results = []
    impls = getattr(pm.hook, hook).get_hookimpls()  # registration order, trylast first
    impls = sorted(impls, key=lambda i: i.trylast)  # stable: registration order kept
    skip = set(skip)  # plugin names the caller renders its own way
    for impl in impls:
        if impl.plugin_name in skip:
            continue
        try:
            out = impl.function(**{k: offered[k] for k in impl.argnames})
        except Exception as exc:
            what = _WHAT.get(hook, "plugin {name!r} failed").format(name=impl.plugin_name)
            error = f"{type(exc).__name__}: {exc}"[:500]
            if failures is None:
                warnings.warn(f"trainlens {what}: {error}", RuntimeWarning, stacklevel=3)
            else:
                failures.append(
                    {"plugin": str(impl.plugin_name), "hook": hook, "error": error, "what": what}
                )
            continue
        if out is not None:
            results.append(out)
    return results


def diagnose(
    pm: pluggy.PluginManager,
    records: Records,
    catalogue: Catalogue,
    failures: list[dict[str, str]] | None = None,
) -> list[Finding]:
    """Run every rule; a rule that crashes is reported and skipped, never fatal."""
    found = call_each(pm, "trainlens_diagnose", failures, records=records, catalogue=catalogue)
    merged = merge_findings([f for batch in found for f in batch])
    return rank_findings(qualify(merged, records.meta, catalogue), catalogue)


def write_artifacts(
    pm: pluggy.PluginManager,
    run_dir: Path,
    drill: dict[str, Any],
    records: Records,
    failures: list[dict[str, str]] | None = None,
) -> list[str]:
    """Let report plugins write their files (the run dir's README, `trylast`, at the end)."""
    names = call_each(
        pm, "trainlens_artifacts", failures, run_dir=run_dir, drill=drill, records=records
    )
    return [n for batch in names for n in batch]


def report_sections(
    pm: pluggy.PluginManager,
    drill: dict[str, Any],
    records: Records,
    failures: list[dict[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """`(title, markdown)` sections of every plugin, built-in ones first."""
    found = call_each(pm, "trainlens_report_sections", failures, drill=drill, records=records)
    return [section for batch in found for section in batch]


def drill_fields(
    pm: pluggy.PluginManager,
    drill: dict[str, Any],
    records: Records,
    failures: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Top-level fields plugins add to the drill before it is written (never core keys)."""
    fields: dict[str, Any] = {}
    for batch in call_each(pm, "trainlens_drill_fields", failures, drill=drill, records=records):
        if isinstance(batch, dict):
            fields.update({k: v for k, v in batch.items() if k not in drill})
    return fields
