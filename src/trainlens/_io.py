"""Atomic file writes: a crash while writing never leaves a truncated file behind."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write to a temporary sibling, flush it to disk, then rename over `path`.

    The temporary file is opened like any other file (not with mkstemp's 0600), so the
    result gets the usual permissions from the user's umask. `durable=False` skips the
    fsync: the file still survives the process being killed, only not a power cut (for
    the records streamed while a run goes, written often).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, *, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)
