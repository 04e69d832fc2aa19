"""Small helpers the rules share: formatting numbers and shapes for evidence strings."""

from __future__ import annotations

import re
from typing import Any

from .._format import num, shape_str
from .._records import Records

__all__ = ["exception_info", "is_oom", "module_attrs", "num", "shape_str"]

_OOM = re.compile(r"out of memory|can't allocate memory|cannot allocate memory", re.I)


def exception_info(records: Records) -> dict[str, Any] | None:
    return records.meta.get("exception")


def is_oom(exc: dict[str, Any]) -> bool:
    return exc.get("type") == "OutOfMemoryError" or bool(_OOM.search(exc.get("message", "")))


def module_attrs(records: Records, name: str | None) -> dict[str, Any]:
    if name is None:
        return {}
    return records.meta.get("modules", {}).get(name, {}).get("attrs", {})
