"""The loss a hand-written loop calls `backward()` on, when no loss module or functional
loss said it first: `((pred - y) ** 2).mean()`, `-(logp * adv).mean()`, a VAE's sum.

At the first gradient of a backward pass into the watched parameters (the shared
gradient dispatch), the pass's root is read from the frame of autograd's engine call
below `torch.autograd.backward` (`Tensor.backward` goes through it): on the calling
thread's stack on a CPU, on the stack of the thread blocked in the call when the engine
runs the hook on a device thread. Nothing is wrapped around `backward()`, so the user's
tracebacks keep their frames. A root made by `GradScaler.scale(loss)` is told by the
scaler's wrapped `scale`, and the loss before scaling is the one recorded. Roots of other
models' losses (a GAN's other half) never reach the watched parameters.
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any

import torch

#: subscribers (one per watched run) of the wrapped `GradScaler.scale`
_LISTENERS: list[Any] = []
#: id(scaled loss) -> (weak ref to it, the loss before scaling), for the current steps
_SCALED: dict[int, tuple[Any, torch.Tensor]] = {}
_MAX_SCALED = 64
_ORIGINAL: dict[str, Any] = {}
#: frames walked up from a gradient hook to autograd's engine call
_MAX_DEPTH = 32


def subscribe(listener: Any) -> _Subscription:
    """Keep `GradScaler.scale` told apart while `listener` watches."""
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


def current_root(threads: set[int]) -> torch.Tensor | None:
    """The root of the `backward()` running now (None for `torch.autograd.grad` and for
    several roots), from a gradient hook."""
    found, root = _root_in(sys._getframe(1))
    if found:
        return root
    # the engine ran the hook on a device thread: the caller waits in another one
    here = threading.get_ident()
    frames = sys._current_frames()
    for ident in threads:
        frame = frames.get(ident) if ident != here else None
        if frame is not None:
            found, root = _root_in(frame)
            if found:
                return root
    return None


def _root_in(frame: Any) -> tuple[bool, torch.Tensor | None]:
    """(whether autograd's engine call is on this stack, the root it was given)."""
    for _ in range(_MAX_DEPTH):
        if frame is None:
            return False, None
        code = frame.f_code
        if code.co_name == "_engine_run_backward" and "autograd" in code.co_filename:
            caller = frame.f_back
            if caller is None or caller.f_code.co_name != "backward":
                return True, None  # `torch.autograd.grad` (a penalty, an inner loop)
            roots = frame.f_locals.get("t_outputs")
            if isinstance(roots, (tuple, list)) and len(roots) == 1:
                root = roots[0]
                return True, root if isinstance(root, torch.Tensor) else None
            return True, None
        frame = frame.f_back
    return False, None


def unscaled(root: torch.Tensor) -> torch.Tensor:
    """The loss before `GradScaler.scale`, or `root` itself."""
    entry = _SCALED.get(id(root))
    if entry is not None and entry[0]() is root:
        return entry[1]
    return root


def _install() -> None:
    scaler = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if scaler is None or "scale" not in vars(scaler):
        return
    original_scale = scaler.scale
    _ORIGINAL["scale"] = (scaler, original_scale)

    def scale(self: Any, outputs: Any) -> Any:
        out = original_scale(self, outputs)
        try:  # bookkeeping only: never the user's error
            if (
                _LISTENERS
                and isinstance(outputs, torch.Tensor)
                and isinstance(out, torch.Tensor)
                and outputs.numel() == 1
            ):
                if len(_SCALED) >= _MAX_SCALED:
                    _SCALED.clear()
                _SCALED[id(out)] = (weakref.ref(out), outputs.detach())
        except Exception:  # pragma: no cover - the root is then recorded scaled
            pass
        return out

    scale.__wrapped__ = original_scale  # type: ignore[attr-defined]
    scaler.scale = scale


def _uninstall() -> None:
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
