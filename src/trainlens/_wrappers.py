"""Wrappers around the user's layers (DDP, DataParallel, torch.compile) and how to see
through them. A leaf module: probes and the watch block both need it."""

from __future__ import annotations

from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that holds the layers: through DDP/DataParallel and torch.compile.

    Hooks go on it, and names come from it, so they read `encoder.0`, not
    `module._orig_mod.encoder.0`.
    """
    while (inner := unwrap_one(model)) is not model:
        model = inner
    return model


def wrappers(model: nn.Module) -> list[str]:
    """The wrapper classes around the layers, outermost first (for run.json)."""
    out = []
    while (inner := unwrap_one(model)) is not model:
        out.append(type(model).__name__)
        model = inner
    return out


def unwrap_one(model: nn.Module) -> nn.Module:
    if type(model).__name__ == "OptimizedModule":
        # through `_modules` itself: a ScriptModule's is no dict and has no `.get`
        inner = model.__dict__.get("_modules", {}).get("_orig_mod")
        if isinstance(inner, nn.Module):
            return inner
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model
