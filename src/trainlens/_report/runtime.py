"""A drill.md section for what trainlens could not see: torch.compile, TorchScript, stopped
probes."""

from __future__ import annotations

from typing import Any

from .._hookspecs import hookimpl
from .._records import Records


@hookimpl
def trainlens_report_sections(drill: dict[str, Any], records: Records) -> list[tuple[str, str]]:
    parts = [
        f"**Warning:** {note['warning']}"
        for key in ("compile", "torchscript")
        if (note := records.meta.get(key))
    ]
    for stop in records.meta.get("probes_stopped") or ():
        parts.append(
            f"**Warning:** probe `{stop['probe']}` stopped at step {stop['step']}: "
            f"{stop['error']}. Its records end there; the training itself was not touched."
        )
    if not parts:
        return []
    return [("What trainlens could not see", "\n\n".join(parts))]
