"""The loss at initialisation: the first training loss, with what a rule needs to judge it.

For classification the first loss should sit near ln(number of classes): an untrained
model guesses uniformly. Far off means a bad init (huge logits), a missing or doubled
softmax, or wrong targets. This probe only records the value and the loss's shapes;
`_rules/_initial_loss.py` decides.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.loss import _Loss
from torch.utils.hooks import RemovableHandle

from ._state import _SUSPENDED, WatchState, compiling

#: losses whose first value has an expected level at a uniform guess
CLASSIFICATION_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss, nn.BCEWithLogitsLoss, nn.BCELoss)


class InitialLossProbe:
    def __init__(self, state: WatchState):
        self.state = state
        self.handles: list[RemovableHandle] = []
        self._value: torch.Tensor | None = None
        self._info: dict[str, Any] | None = None
        self._done = False

    def install(self) -> None:
        self.handles.append(nn.modules.module.register_module_forward_hook(self._on_forward))

    def retire(self) -> None:
        """Done for this run: the global hook goes, so later steps do not pay for it."""
        self._done = True
        if self.state.compiled:
            return  # changing the hooks would make dynamo guard, recompile the model
        for handle in self.handles:
            handle.remove()

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if compiling() or not isinstance(module, _Loss) or _SUSPENDED[0]:
            return
        if self._done or self.state.split() != "train" or not isinstance(output, torch.Tensor):
            return
        self.retire()  # only the first training loss matters
        if len(args) < 2 or not all(isinstance(a, torch.Tensor) for a in args[:2]):
            return
        self._value = output.detach().float().mean()  # read once, in finish(): no sync now
        self._info = describe_loss(module, args[0], args[1])
        self._info["step"] = self.state.step

    def finish(self, exc: BaseException | None) -> None:
        if self._info is None or self._value is None:
            return
        self._info["value"] = float(self._value)
        self.state.extra_meta["initial_loss"] = self._info


def describe_loss(loss: Any, pred: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
    """Kind of loss, reduction and class count: what the expected first value depends on."""
    info: dict[str, Any] = {
        "loss": type(loss).__name__,
        "reduction": getattr(loss, "reduction", "mean"),
        "input_shape": list(pred.shape),
        "target_shape": list(target.shape),
        "target_dtype": str(target.dtype).removeprefix("torch."),
        "classes": None,
        "kind": "other",
    }
    if isinstance(loss, (nn.CrossEntropyLoss, nn.NLLLoss)):
        info["kind"] = "multiclass"
        info["classes"] = int(pred.shape[1] if pred.dim() >= 2 else pred.shape[0])
        info["input_range"] = _range(pred)
    elif isinstance(loss, (nn.BCEWithLogitsLoss, nn.BCELoss)):
        info["kind"] = "binary"
        info["classes"] = 2
        info["weighted"] = getattr(loss, "pos_weight", None) is not None
        info["target_range"] = _range(target)
    return info


def _range(t: torch.Tensor) -> list[float] | None:
    if t.numel() == 0 or not t.is_floating_point():
        return None
    with torch.no_grad():
        return [float(t.min()), float(t.max())]
