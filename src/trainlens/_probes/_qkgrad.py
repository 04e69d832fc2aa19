"""Query/key gradients of `nn.MultiheadAttention`: can the attention pattern learn at all?

The packed `in_proj_weight` holds the query, key and value projections; its whole-tensor
gradient norm (params.parquet) hides a query/key part that gets exactly zero gradient
(both initialised to zero: each one's gradient is the other's value, so neither ever
moves and every row stays uniform). On sampled steps this keeps the running max |grad| of
the query and key rows on the device and reads it back once, at the end. It only records;
`_rules/confusing_attention.py` decides.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ._base import Probe
from ._state import WatchState


class AttentionQKGradProbe(Probe):
    name = "attention_qk_grad"

    def __init__(self, state: WatchState):
        super().__init__(state)
        self._seen: dict[str, list[Any]] = {}  # module -> [q max, k max, sampled steps]

    def install(self) -> None:
        for name, m in self.state.model.named_modules():
            w = getattr(m, "in_proj_weight", None)
            if not isinstance(m, nn.MultiheadAttention) or w is None or not w.requires_grad:
                continue
            self.handles.append(w.register_hook(self.guard(self._hook(name, int(m.embed_dim)))))

    def _hook(self, name: str, dim: int) -> Any:
        steps: set[int] = set()

        def on_grad(grad: torch.Tensor) -> None:
            if not self.state.sampled:
                return
            if grad.layout != torch.strided:  # (a gradient is training: no split check)
                return
            with torch.no_grad():
                qk = grad.detach()[: 2 * dim].abs().reshape(2, dim, -1).amax(dim=(1, 2))
            seen = self._seen.get(name)
            self._seen[name] = [qk if seen is None else torch.maximum(seen[0], qk), steps]
            steps.add(self.state.step)

        return on_grad

    def finish(self, exc: BaseException | None) -> None:
        out = {}
        try:
            for name, (qk, steps) in self._seen.items():
                q, k = (float(v) for v in qk.float().cpu())
                out[name] = {"q_grad_max": q, "k_grad_max": k, "sampled_steps": len(steps)}
        except Exception as err:  # a device error at the end: lose this fact, not the run
            warnings.warn(
                f"trainlens lost the query/key gradient check: {err}", RuntimeWarning, stacklevel=2
            )
            return
        if out:
            self.state.extra_meta["attention_qk_grad"] = out
