"""The plugin contract: every hook trainlens calls, declared and documented in one place.

Built-in rules and report sections are plugins registered exactly like third-party ones.
A third-party plugin is any module or object with functions marked `@trainlens.hookimpl`,
found through the `trainlens` entry-point group or passed as `watch(..., plugins=[...])`:

    # my_rules.py
    import trainlens

    @trainlens.hookimpl
    def trainlens_diagnose(records, catalogue):
        if records.train_loss().max() > 1e6:
            return [catalogue.finding("diverging", "error", [catalogue.cause(
                "diverging", "lr_too_high", confidence=0.5, evidence="loss above 1e6")])]
        return []

    # pyproject.toml of the plugin's package
    [project.entry-points.trainlens]
    my_rules = "my_rules"
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ._catalogue import Catalogue
    from ._finding import Finding
    from ._records import Records

PROJECT = "trainlens"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def trainlens_catalogue_dirs() -> list[Path]:
    """Folders of extra `*.toml` recipes.

    A recipe for a symptom the catalogue knows adds causes to it and may override its
    thresholds; the built-in `recipes/` folder is read first.
    """


@hookspec
def trainlens_diagnose(records: Records, catalogue: Catalogue) -> list[Finding] | None:
    """Return the findings this rule sees in a finished run.

    A rule is a pure function of `records` (the run's DataFrames and metadata) and
    `catalogue` (texts and thresholds): it never touches a module, a tensor or a hook.
    Build findings with `catalogue.finding(...)` and `catalogue.cause(...)` so their first
    checks and fixes come from the recipes. Findings of one symptom from several rules
    are merged, causes ranked by confidence.
    """


@hookspec
def trainlens_artifacts(run_dir: Path, drill: dict[str, Any], records: Records) -> list[str]:
    """Write extra files into the run directory (pictures, checkpoints); return their names.

    Called after the records are saved and before `drill.md` is written, so report
    sections can link the files. Write atomically (`trainlens._io`), and write nothing
    when there is nothing to show.
    """


@hookspec
def trainlens_report_sections(drill: dict[str, Any], records: Records) -> list[tuple[str, str]]:
    """Extra sections for `drill.md` and `trainlens report`: `(title, markdown)` pairs.

    Sections from all plugins appear after the findings, built-in ones first.
    """


@hookspec
def trainlens_drill_fields(drill: dict[str, Any], records: Records) -> dict[str, Any] | None:
    """Top-level fields to add to `drill.json` before it is written (e.g. `overfit`).

    Called once the findings are in `drill`; keys the drill already has are not
    replaced. Return JSON-able values.
    """
