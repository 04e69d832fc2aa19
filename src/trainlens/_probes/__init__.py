"""Probes: hooks that record numbers into the run's tables. A probe never decides what is wrong.

Every probe is a `Probe` (`_base.py` states the contract: install / retire / finish, the
handles it owns, the one guard its hooks run behind, and how a failing probe stops
without touching the user's program). `watch` holds a `ProbeSet`:
`ProbeSet.install(state, DEFAULT_PROBES)` on entry, `.close()` in a `finally` (no hook,
patch or filter outlives the block), then `.finish(exc)`.
"""

from __future__ import annotations

from ._attention import AttentionProbe
from ._base import Probe, ProbeSet
from ._batch_dependency import BatchDependencyProbe
from ._checkpoint import CheckpointProbe
from ._clipping import ClipProbe
from ._compile import CompileProbe
from ._finite import FiniteProbe
from ._functional_loss import FunctionalLossProbe
from ._grad_carry import GradCarryProbe
from ._initial_loss import InitialLossProbe
from ._loaders import LoaderProbe
from ._loss import LossProbe
from ._loss_inputs import LossInputProbe
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
    LoaderProbe,
    ClipProbe,
)

__all__ = [
    "DEFAULT_PROBES",
    "BatchDependencyProbe",
    "CompileProbe",
    "FunctionalLossProbe",
    "InitialLossProbe",
    "LoaderProbe",
    "LossProbe",
    "ModuleProbe",
    "Probe",
    "ProbeSet",
    "StepProbe",
    "WatchState",
    "suspended",
]
