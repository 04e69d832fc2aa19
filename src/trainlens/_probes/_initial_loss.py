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

from ._base import Probe
from ._state import WatchState
from ._tensors import has_values

#: losses whose first value has an expected level at a uniform guess
CLASSIFICATION_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss, nn.BCEWithLogitsLoss, nn.BCELoss)


class InitialLossProbe(Probe):
    name = "initial_loss"
    once = True

    def __init__(self, state: WatchState):
        super().__init__(state)
        self._value: torch.Tensor | None = None
        self._info: dict[str, Any] | None = None
        self._done = False

    def install(self) -> None:
        self.state.forwards.loss(self, self._on_forward)

    def retire(self) -> None:
        """Done for this run: the loss subscription goes, so later steps do not pay for it."""
        self._done = True
        super().retire()

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._done or self.state.split() != "train" or not isinstance(output, torch.Tensor):
            return
        self.retire()  # only the first training loss matters
        if len(args) < 2 or not all(isinstance(a, torch.Tensor) for a in args[:2]):
            return
        self._value = output.detach().float().mean()  # read once, in finish(): no sync now
        self._info = describe_loss(module, args[0], args[1])
        self._info["step"] = self.state.step

    def finish(self, exc: BaseException | None) -> None:
        if self._info is None or self._value is None or not has_values(self._value):
            return  # none seen, or a dry run on the meta device: no value to read
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
        info["input_range"] = _range(pred)
        info["target_range"] = _range(target)
    return info


def _range(t: torch.Tensor) -> list[float] | None:
    if t.numel() == 0 or not t.is_floating_point() or not has_values(t):
        return None
    with torch.no_grad():
        return [float(t.min()), float(t.max())]
