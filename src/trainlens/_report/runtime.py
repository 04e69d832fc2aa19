"""A drill.md section for what the run's setup hid from trainlens (torch.compile)."""

from __future__ import annotations

from typing import Any

from .._hookspecs import hookimpl
from .._records import Records


@hookimpl
def trainlens_report_sections(drill: dict[str, Any], records: Records) -> list[tuple[str, str]]:
    compiled = records.meta.get("compile")
    if not compiled:
        return []
    return [("What trainlens could not see", f"**Warning:** {compiled['warning']}")]
