"""How numbers, shapes and sizes read in evidence, drills and reports."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence


def num(x: float) -> str:
    """3 significant digits; scientific notation when tiny or huge; '-' for NaN.

    The notation is chosen from the rounded value, so 99 999.7 reads 1.00e+05 and a value a
    hair under 1e-3 reads 0.001, whatever its last bits.
    """
    if x != x:
        return "-"
    if math.isfinite(x):
        x = float(f"{x:.3g}")
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.3g}"
    return f"{x:.2e}"


def shape_str(shape: Sequence[int] | None) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]" if shape is not None else "?"


_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def human_bytes(n: float) -> str:
    """Bytes in the largest unit under 1024, one decimal (whole bytes in B).

    The unit is chosen after rounding: 2**20 - 1 bytes reads 1.0 MB, never 1024.0 KB, so
    a slope a hair under 1 MiB reads the same on every machine.
    """
    n = float(n)
    for i, unit in enumerate(_UNITS):
        digits = 0 if unit == "B" else 1
        shown = round(n, digits) if math.isfinite(n) else n
        if abs(shown) < 1024 or i == len(_UNITS) - 1:
            return f"{shown:.{digits}f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


#: what one field of a run dir may print in the terminal: a real evidence string is a few
#: hundred characters; a hostile or runaway one must not scroll the report away
FIELD_CHARS = 3000
FIELD_LINES = 40

#: C0 controls but tab and newline, DEL, C1 controls (ESC starts every CSI/OSC sequence:
#: clear screen, window title, OSC 52 clipboard writes; 0x9b is CSI on its own), and the
#: bidirectional overrides that reorder what a reader sees
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(value: object, limit: int = FIELD_CHARS, lines: int = FIELD_LINES) -> str:
    """Text from a run dir, fit for a terminal: control characters shown escaped (`\\x1b`),
    at most `limit` characters and `lines` lines, and a note saying how much was cut."""
    text = _CONTROL.sub(_escape, str(value))
    end = min(len(text), limit)
    newline = -1
    for _ in range(lines):
        newline = text.find("\n", newline + 1, end)
        if newline < 0:
            break
    if newline >= 0:
        end = newline
    if end >= len(text):
        return text
    return f"{text[:end]}… (cut: {len(text) - end} more characters)"


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
