"""Gradient clipping: how much `clip_grad_norm_` / `clip_grad_value_` cut the gradients.

A `max_norm` far below the gradient's own norm (1e-4 typed for 1.0) shrinks every step
by the same factor: the loss crawls as with a learning rate that many times too small,
and the update sizes alone would blame the lr. For the block, torch's clipping is wrapped:
`torch.nn.utils.clip_grad._clip_grads_with_norm_`, which `clip_grad_norm_` looks up at
every call however the user imported it, hands over the norm before clipping (computed
anyway: kept as a tensor, read at the end); `clip_grad_value_` (the attribute of
`torch.nn.utils`; a name imported before the block is not seen) gets the share of the
gradient's elements it clips, counted on the device before it clips them. Sampled steps
only, the first `MAX_SAMPLES`; every call is counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ._base import Probe, _Removal, hook
from ._state import WatchState

#: sampled steps whose clipping is measured (the cut is the same from the first step on)
MAX_SAMPLES = 16


class ClipProbe(Probe):
    name = "clipping"

    def __init__(self, state: WatchState):
        super().__init__(state)
        self._calls = {"norm": 0, "value": 0}
        # (step, max_norm, the norm before clipping) / (step, clip_value, elements clipped,
        # elements): device tensors until the end
        self._norms: list[tuple[int, float, torch.Tensor]] = []
        self._values: list[tuple[int, float, torch.Tensor, int]] = []

    def install(self) -> None:
        self.handles.append(_patch_clipping(self._on_norm, self._on_value))

    @hook(in_compiled=True)
    def _on_norm(self, max_norm: Any, total_norm: Any) -> None:
        self._calls["norm"] += 1
        if self.state.sampled and len(self._norms) < MAX_SAMPLES:
            self._keep_norm(max_norm, total_norm)

    def _keep_norm(self, max_norm: Any, total_norm: Any) -> None:
        if isinstance(max_norm, (int, float)) and isinstance(total_norm, torch.Tensor):
            self._norms.append((self.state.step, float(max_norm), total_norm.detach()))

    @hook(in_compiled=True)
    def _on_value(self, parameters: Any, clip_value: Any) -> None:
        self._calls["value"] += 1
        if not self.state.sampled or len(self._values) >= MAX_SAMPLES:
            return
        if not isinstance(clip_value, (int, float)):
            return
        params = [parameters] if isinstance(parameters, torch.Tensor) else parameters
        grads = [p.grad for p in params if p.grad is not None and p.grad.layout == torch.strided]
        if not grads:
            return
        value = abs(float(clip_value))
        over = torch.stack([(g.detach().abs() > value).sum() for g in grads]).sum()
        self._values.append((self.state.step, value, over, sum(g.numel() for g in grads)))

    def finish(self, exc: BaseException | None) -> None:
        if not any(self._calls.values()):
            return
        info: dict[str, Any] = {
            "norm_calls": self._calls["norm"],
            "value_calls": self._calls["value"],
        }
        if self._norms:
            before = torch.stack([t.to(torch.float64).cpu() for _, _, t in self._norms]).tolist()
            info["norm"] = [
                {"step": s, "max_norm": m, "norm_before": b}
                for (s, m, _), b in zip(self._norms, before, strict=True)
            ]
        if self._values:
            over = torch.stack([t.cpu() for _, _, t, _ in self._values]).tolist()
            info["value"] = [
                {"step": s, "clip_value": v, "share_clipped": o / n if n else None}
                for (s, v, _, n), o in zip(self._values, over, strict=True)
            ]
        self.state.extra_meta["grad_clipping"] = info


def _patch_clipping(on_norm: Any, on_value: Any) -> _Removal:
    """Wrap torch's clipping for the block; each wrapper calls the original whatever the
    probe does, and the probe's failure is never the user's."""
    import torch.nn.utils as utils
    from torch.nn.utils import clip_grad

    active = [True]
    undo: list[Any] = []
    inner = vars(clip_grad).get("_clip_grads_with_norm_")
    if inner is not None:

        def _clip_grads_with_norm_(*args: Any, **kwargs: Any) -> Any:
            if active[0]:
                try:  # noqa: SIM105 - once per clipping call; never the user's error
                    on_norm(
                        args[1] if len(args) > 1 else kwargs.get("max_norm"),
                        args[2] if len(args) > 2 else kwargs.get("total_norm"),
                    )
                except Exception:
                    pass
            return inner(*args, **kwargs)

        clip_grad._clip_grads_with_norm_ = _clip_grads_with_norm_  # type: ignore[attr-defined]
        undo.append((clip_grad, "_clip_grads_with_norm_", inner, _clip_grads_with_norm_))
    by_value = vars(clip_grad).get("clip_grad_value_")
    if by_value is not None:

        def clip_grad_value_(*args: Any, **kwargs: Any) -> Any:
            if active[0]:
                params = args[0] if args else kwargs.get("parameters")
                if isinstance(params, Iterator):
                    # a generator (`model.parameters()`) is read once, here, and the list
                    # handed on: torch reads the same parameters
                    params = list(params)
                    if args:
                        args = (params, *args[1:])
                    else:
                        kwargs["parameters"] = params
                try:  # noqa: SIM105
                    on_value(params, args[1] if len(args) > 1 else kwargs.get("clip_value"))
                except Exception:
                    pass
            return by_value(*args, **kwargs)

        for module in (clip_grad, utils):
            if vars(module).get("clip_grad_value_") is by_value:
                module.clip_grad_value_ = clip_grad_value_  # type: ignore[attr-defined]
                undo.append((module, "clip_grad_value_", by_value, clip_grad_value_))

    def restore() -> None:
        active[0] = False
        for module, name, original, wrapper in reversed(undo):
            if vars(module).get(name) is wrapper:
                setattr(module, name, original)

    return _Removal(restore)
