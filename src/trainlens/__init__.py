"""trainlens: a training-diagnostics debugger for PyTorch.

    with trainlens.watch(model, optimizer) as lens:
        ...your own training loop...
    print(lens.findings)

Leaving the block writes a failure drill (`drill.json`, `drill.md`) and the records into
the run directory. See the README for the whole tour.
"""

from __future__ import annotations

from ._errors import CatalogueError, RunDirError, TargetError, TrainlensError, UsageError
from ._finding import Cause, Finding
from ._hookspecs import hookimpl
from ._overfit import OverfitResult, Setup, overfit_one_batch
from ._records import Records
from ._run import Run, load_run
from ._version import __version__
from ._watch import Lens, watch

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
    "watch",
]
