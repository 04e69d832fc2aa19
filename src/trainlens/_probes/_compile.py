"""torch.compile (and TorchScript): what trainlens sees of a compiled model, and saying
what it cannot.

Every trainlens hook returns at once while dynamo traces (`compiling()`), so a compiled
graph gets no graph break, no guard on trainlens state and no recompilation from it. The
price: inside compiled code there are no per-module shapes, activation statistics or
loss-module captures. What runs eagerly is still recorded: gradients and updates
(parameter hooks fire in the autograd engine), optimizer steps, loss modules called
outside the compiled model. When `watch` is given the compiled wrapper
(`torch.compile(model)`), its own call runs eagerly too: this probe records the model's
input statistics and the root input/output shapes there.

The root forward hook sets `state.compiled` under tracing (dynamo replays that constant
store on every compiled call), so a model compiled inside the block is noticed too.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import torch
from torch import nn

from ._base import Probe, hook
from ._modules import ModuleProbe
from ._state import WatchState
from ._tensors import signature, tensor_leaves

NOT_RECORDED = "per-module shapes, activation statistics and losses computed inside compiled code"
RECORDED = (
    "losses of loss modules called outside the compiled model, gradients, parameter "
    "updates and optimizer steps"
)

# torch warns when a module is compiled while global module hooks exist (trainlens's loss
# capture): they fire once more for the wrapper, which trainlens ignores
_GLOBAL_HOOK_WARNING = r"Using `torch.compile\(module\)` when there are global hooks"


def compiled_wrapper(outer: nn.Module) -> nn.Module | None:
    """The torch.compile wrapper (OptimizedModule) among the wrappers the user passed."""
    from .._wrappers import unwrap_one

    module = outer
    while True:
        if type(module).__name__ == "OptimizedModule":
            return module
        inner = unwrap_one(module)
        if inner is module:
            return None
        module = inner


class _WarningFilter:
    """A warnings filter owned like a hook: `remove()` takes exactly this one out."""

    def __init__(self, message: str):
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
        self._filter: Any = warnings.filters[0]

    def remove(self) -> None:
        if self._filter is None:
            return
        try:
            warnings.filters.remove(self._filter)
            warnings._filters_mutated()  # type: ignore[attr-defined]
        except (ValueError, AttributeError):
            pass
        self._filter = None


class CompileProbe(Probe):
    name = "compile"

    def __init__(self, state: WatchState):
        super().__init__(state)
        self._wrapper: nn.Module | None = None
        self._seen: set[Any] = set()
        self._boundary = ModuleProbe(state)  # only for its recording helpers
        self._type_name = type(state.model).__name__

    def install(self) -> None:
        # removed with the hooks, whatever fails before (a handle like the others)
        self.handles.append(_WarningFilter(_GLOBAL_HOOK_WARNING))
        wrapper = compiled_wrapper(self.state.outer)
        if wrapper is None:
            return
        self._wrapper = wrapper
        self.handles.append(wrapper.register_forward_pre_hook(self._pre))
        self.handles.append(wrapper.register_forward_hook(self._post))

    # the wrapper's own call runs eagerly: these hooks are never traced
    @hook(in_compiled=True)
    def _pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.state.sampled:
            self._boundary._record_input(args)

    @hook(in_compiled=True)
    def _post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if output is None:
            return
        ins, outs = tensor_leaves(args), tensor_leaves(output)
        sig = (signature(ins), signature(outs))
        if sig not in self._seen and len(self._seen) < 8:
            self._seen.add(sig)
            self._boundary._record_shapes("", self._type_name, 1, ins, outs)

    def finish(self, exc: BaseException | None) -> None:
        state = self.state
        if isinstance(state.model, torch.jit.ScriptModule):
            _note_torchscript(state)
        if not state.compiled and self._wrapper is None:
            return
        how = (
            "watch was given the torch.compile wrapper"
            if self._wrapper is not None
            else "the model was compiled inside the block"
        )
        seen = RECORDED
        if self._wrapper is not None:
            seen += ", and the model's input and output at the compiled boundary"
        note = (
            f"torch.compile: {how}. trainlens does not trace inside compiled graphs (that "
            f"would break and recompile them), so {NOT_RECORDED} are not recorded; "
            f"recorded: {seen}. Rules that need the unseen records stay silent. To see "
            "inside, watch a few steps of the model without torch.compile; for a loss "
            "computed inside compiled code, call lens.log_loss(loss)."
        )
        state.extra_meta["compile"] = {
            "compiled": True,
            "how": how,
            "not_recorded": NOT_RECORDED,
            "recorded": seen,
            "warning": note,
        }
        print(f"trainlens: warning: {note}", file=sys.stderr)  # once per run


def _note_torchscript(state: WatchState) -> None:
    """A TorchScript model's layers run where no module hook reaches: say what is missing."""
    note = (
        "TorchScript: the model runs as TorchScript (torch.jit.script or torch.jit.trace), "
        "where no module hook reaches, so per-module shapes, activation statistics and "
        "losses computed inside it are not recorded; recorded: the model's input and "
        "output, losses of loss modules called outside it, gradients, parameter updates "
        "and optimizer steps. Rules that need the unseen records stay silent. To see "
        "inside, watch a few steps of the model before it is scripted."
    )
    state.extra_meta["torchscript"] = {"not_recorded": NOT_RECORDED, "warning": note}
    print(f"trainlens: warning: {note}", file=sys.stderr)  # once per run
