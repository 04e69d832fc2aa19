"""Probes: hooks that record numbers into the run's tables. A probe never decides what is wrong.

A probe is built from the run's `WatchState`, registers its hooks in `install()` and keeps
every `RemovableHandle` in `probe.handles` (also hooks it adds later, e.g. once lazy
parameters exist); `watch` removes them all in a `finally`, so no hook outlives its block.
After removal, an optional `probe.finish(exc)` runs (exc is the block's exception or None)
for what only the end of the run knows; run-level facts go into `state.extra_meta`, which
becomes part of `records.meta`.
"""

from __future__ import annotations

from ._attention import AttentionProbe
from ._batchdep import BatchDependencyProbe
from ._checkpoint import CheckpointProbe
from ._compile import CompileProbe
from ._finite import FiniteProbe
from ._flat import GradCarryProbe, LossInputProbe
from ._functional_loss import FunctionalLossProbe
from ._initloss import InitialLossProbe
from ._loss import LossProbe
from ._memory import MemoryProbe
from ._modules import ModuleProbe
from ._qkgrad import AttentionQKGradProbe
from ._state import WatchState, suspended
from ._steps import StepProbe

#: the probes every watched run installs, in order
DEFAULT_PROBES = (
    ModuleProbe,
    LossProbe,
    StepProbe,
    AttentionProbe,
    LossInputProbe,
    GradCarryProbe,
    MemoryProbe,
    CheckpointProbe,
    FiniteProbe,
    CompileProbe,
    BatchDependencyProbe,
    InitialLossProbe,
    AttentionQKGradProbe,
    FunctionalLossProbe,
)

__all__ = [
    "DEFAULT_PROBES",
    "BatchDependencyProbe",
    "CompileProbe",
    "FunctionalLossProbe",
    "InitialLossProbe",
    "LossProbe",
    "ModuleProbe",
    "StepProbe",
    "WatchState",
    "suspended",
]
