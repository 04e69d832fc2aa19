"""How numbers, shapes and sizes read in evidence, drills and reports."""

from __future__ import annotations

from collections.abc import Sequence


def num(x: float) -> str:
    """3 significant digits; scientific notation when tiny or huge; '-' for NaN."""
    if x != x:
        return "-"
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.3g}"
    return f"{x:.2e}"


def shape_str(shape: Sequence[int] | None) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]" if shape is not None else "?"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
