"""Giving memory back when a watched block ends (issue 20: the exit kept ~58 MB).

What a finished run keeps is what the user reads: `lens.records` (bounded DataFrames),
`lens.drill`, `lens.findings`. Two other things outlived the block:

- the recording state: every table's columnar buffers (Python lists, a second copy of
  the records, up to the tables' bounds; about 13 MB after 50 000 steps of a small MLP)
  and the probes that point at them;
- pyarrow's allocator (mimalloc or jemalloc) keeps the pages it used to build and write
  the parquet files, about 20-30 MB after a long run, until asked to return them.

glibc's `malloc_trim` would return a few more MB of freed heap, but the process reuses that
heap for its next allocations anyway, and it is glibc-only: not used.
"""

from __future__ import annotations

import sys
from typing import Any


def release_after_block(lens: Any) -> None:
    """Drop the finished block's recording state and return pyarrow's unused pages.

    Called last when the block ends, whatever happened in it; never raises (it only
    frees memory, so a failure costs memory, never the user's run).
    """
    try:
        state = lens._state
        # the state and its probes point at each other: without emptying the buffers here
        # they would wait for a full garbage collection (0.5 s in a process with torch)
        for table in getattr(state, "tables", {}).values():
            for column in getattr(table, "_data", ()):
                column.clear()
        if state is not None:  # the streaming closure points back at the state
            state.on_stream = None
        stream = getattr(lens, "_stream", None)
        if stream is not None:
            stream.listeners = []
        lens._stream = None
        lens._state = None
        lens._probe_set = None
        lens._loss_probe = None
        pyarrow = sys.modules.get("pyarrow")  # never imported only for this
        if pyarrow is not None:
            pyarrow.default_memory_pool().release_unused()
    except Exception:  # pragma: no cover - freeing memory must not break the user's run
        pass
