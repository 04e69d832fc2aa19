"""The loss a hand-written loop calls `backward()` on, when no loss module or functional
loss said it first: `((pred - y) ** 2).mean()`, `-(logp * adv).mean()`, a VAE's sum.

`torch.autograd.backward` (which `Tensor.backward` calls) is wrapped for the block: after
a backward pass that reached the watched model's parameters (the gradient dispatch
counted it), its scalar root is the step's training loss. A root made by
`GradScaler.scale(loss)` is told by the scaler's own wrapped `scale`, and the loss before
scaling is the one recorded. Roots of other models' losses (a GAN's other half) never
reach the watched parameters and are left out. Nothing runs in the backward pass itself.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from ._state import compiling, transformed

#: subscribers (one per watched run): `before()` -> token, `after(root, token)`
_LISTENERS: list[Any] = []
#: id(scaled loss) -> (weak ref to it, the loss before scaling), for the current steps
_SCALED: dict[int, tuple[Any, torch.Tensor]] = {}
_MAX_SCALED = 64
_ORIGINAL: dict[str, Any] = {}


def subscribe(listener: Any) -> _Subscription:
    """Start telling `listener` of backward roots; the wrappers go on with the first."""
    if not _LISTENERS:
        _install()
    _LISTENERS.append(listener)
    return _Subscription(listener)


class _Subscription:
    def __init__(self, listener: Any):
        self._listener: Any = listener

    def remove(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        if listener in _LISTENERS:
            _LISTENERS.remove(listener)
        if not _LISTENERS:
            _uninstall()


def unscaled(root: torch.Tensor) -> torch.Tensor:
    """The loss before `GradScaler.scale`, or `root` itself."""
    entry = _SCALED.get(id(root))
    if entry is not None and entry[0]() is root:
        return entry[1]
    return root


def _install() -> None:
    autograd = torch.autograd
    original = autograd.backward
    _ORIGINAL["backward"] = original

    def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
        listeners = tuple(_LISTENERS)
        if not listeners or compiling() or transformed():
            return original(tensors, *args, **kwargs)
        tokens = [listener.before_backward() for listener in listeners]
        out = original(tensors, *args, **kwargs)
        root = tensors if isinstance(tensors, torch.Tensor) else None
        if root is None and isinstance(tensors, (tuple, list)) and len(tensors) == 1:
            root = tensors[0] if isinstance(tensors[0], torch.Tensor) else None
        if root is not None:
            for listener, token in zip(listeners, tokens, strict=True):
                listener.after_backward(root, token)
        return out

    backward.__wrapped__ = original  # type: ignore[attr-defined]
    autograd.backward = backward
    scaler = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if scaler is not None and "scale" in vars(scaler):
        original_scale = scaler.scale
        _ORIGINAL["scale"] = (scaler, original_scale)

        def scale(self: Any, outputs: Any) -> Any:
            out = original_scale(self, outputs)
            if (
                _LISTENERS
                and isinstance(outputs, torch.Tensor)
                and isinstance(out, torch.Tensor)
                and outputs.numel() == 1
            ):
                if len(_SCALED) >= _MAX_SCALED:
                    _SCALED.clear()
                _SCALED[id(out)] = (weakref.ref(out), outputs.detach())
            return out

        scale.__wrapped__ = original_scale  # type: ignore[attr-defined]
        scaler.scale = scale


def _uninstall() -> None:
    original = _ORIGINAL.pop("backward", None)
    if original is not None and getattr(torch.autograd.backward, "__wrapped__", None) is original:
        torch.autograd.backward = original
    entry = _ORIGINAL.pop("scale", None)
    if entry is not None:
        scaler, original_scale = entry
        if getattr(scaler.scale, "__wrapped__", None) is original_scale:
            scaler.scale = original_scale
    _SCALED.clear()


#: reductions a hand-written loss ends in, and the ops around them that keep its shape
_REDUCTIONS = ("MeanBackward0", "MeanBackward1", "SumBackward0", "SumBackward1")
_SCALINGS = ("MulBackward0", "DivBackward0", "NegBackward0")
_ELEMENTWISE = (
    "PowBackward0", "AbsBackward0", "MulBackward0", "DivBackward0", "NegBackward0",
    "SqrtBackward0", "SquareBackward0", "ExpBackward0", "LogBackward0", "ReluBackward0",
    "SmoothL1LossBackward0", "ClampMinBackward0",
)  # fmt: skip
_BINARY = ("SubBackward0", "AddBackward0", "MulBackward0", "DivBackward0")


def root_reduction(root: torch.Tensor) -> dict[str, Any] | None:
    """What a hand-written loss reduced, read from its graph near the root: the shape of
    the tensor its final mean or sum took in, and whether that tensor came from a binary
    op with one constant operand (a prediction minus a target, say). Shapes only: the
    nodes keep the sizes they need for backward, and no value is read."""
    node = root.grad_fn
    for _ in range(3):  # `0.5 * x.mean()`, `x.sum() / n`, `-x.mean()`
        if node is None or type(node).__name__ in _REDUCTIONS:
            break
        if type(node).__name__ not in _SCALINGS:
            return None
        node = next((n for n, _ in node.next_functions if n is not None), None)
    if node is None or type(node).__name__ not in _REDUCTIONS:
        return None
    sizes = getattr(node, "_saved_self_sym_sizes", None)
    if sizes is None:
        return None
    const_operand = None
    below = next((n for n, _ in node.next_functions if n is not None), None)
    for _ in range(4):  # `(pred - y) ** 2`, `(pred - y).abs()`, `F.relu(margin - ...)`
        if below is None:
            break
        name = type(below).__name__
        inputs = [n for n, _ in below.next_functions]
        if name in _BINARY and len(inputs) == 2 and (inputs[0] is None) != (inputs[1] is None):
            const_operand = name
            break
        if name not in _ELEMENTWISE:
            break
        below = next((n for n in inputs if n is not None), None)
    return {
        "reduction": type(node).__name__,
        "reduced_shape": [int(v) for v in sizes],
        "constant_operand": const_operand,
    }
