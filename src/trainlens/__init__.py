"""trainlens: a training-diagnostics debugger for PyTorch.

    with trainlens.watch(model, optimizer) as lens:
        ...your own training loop...
    print(lens.findings)

Leaving the block writes a failure drill (`drill.json`, `drill.md`, `drill.html`) and the
records into the run directory. See the README for the whole tour.

The public names are loaded on first use (PEP 562), so `trainlens --help` and the console
script start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import CatalogueError, RunDirError, TargetError, TrainlensError, UsageError
from ._version import DISTRIBUTION as DISTRIBUTION  # the name on the package index
from ._version import __version__

if TYPE_CHECKING:
    from ._finding import Cause, Finding
    from ._hookspecs import hookimpl
    from ._overfit import OverfitResult, Setup, overfit_one_batch
    from ._records import Records
    from ._report.display import report
    from ._run import Run, load_run
    from ._watch import Lens, watch

#: public name -> the private module that defines it, imported when the name is first used
_LAZY = {
    "Cause": "._finding",
    "Finding": "._finding",
    "hookimpl": "._hookspecs",
    "OverfitResult": "._overfit",
    "Setup": "._overfit",
    "overfit_one_batch": "._overfit",
    "Records": "._records",
    "report": "._report.display",
    "Run": "._run",
    "load_run": "._run",
    "Lens": "._watch",
    "watch": "._watch",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainlens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CatalogueError",
    "Cause",
    "Finding",
    "Lens",
    "OverfitResult",
    "Records",
    "Run",
    "RunDirError",
    "Setup",
    "TargetError",
    "TrainlensError",
    "UsageError",
    "__version__",
    "hookimpl",
    "load_run",
    "overfit_one_batch",
    "report",
    "watch",
]
