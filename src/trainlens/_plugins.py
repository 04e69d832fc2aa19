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


def diagnose(pm: pluggy.PluginManager, records: Records, catalogue: Catalogue) -> list[Finding]:
    """Run every rule; a rule that crashes is reported and skipped, never fatal.

    Each implementation is called on its own so one broken third-party rule cannot hide
    the findings of the others.
    """
    findings: list[Finding] = []
    for impl in pm.hook.trainlens_diagnose.get_hookimpls():
        offered = {"records": records, "catalogue": catalogue}
        try:
            found = impl.function(**{k: offered[k] for k in impl.argnames})
        except Exception as exc:
            warnings.warn(
                f"trainlens rule {impl.plugin_name!r} failed and was skipped: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        findings.extend(found or [])
    return rank_findings(merge_findings(findings), catalogue)


def write_artifacts(
    pm: pluggy.PluginManager, run_dir: Path, drill: dict[str, Any], records: Records
) -> list[str]:
    """Let report plugins write their files; a plugin that fails is reported and skipped."""
    written: list[str] = []
    # registration order, but `trylast` ones (the run dir's README, listing the files) at
    # the end; a stable sort keeps the rest as they were
    impls = sorted(pm.hook.trainlens_artifacts.get_hookimpls(), key=lambda i: i.trylast)
    for impl in impls:
        offered = {"run_dir": run_dir, "drill": drill, "records": records}
        try:
            names = impl.function(**{k: offered[k] for k in impl.argnames})
        except Exception as exc:
            warnings.warn(
                f"trainlens report plugin {impl.plugin_name!r} could not write its files: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        written.extend(names or [])
    return written


def report_sections(
    pm: pluggy.PluginManager, drill: dict[str, Any], records: Records
) -> list[tuple[str, str]]:
    # pluggy calls the last registered first; built-ins were registered first
    results = pm.hook.trainlens_report_sections(drill=drill, records=records)
    return [section for sections in reversed(results) for section in (sections or [])]
