"""Finding the tensors inside module inputs and outputs (tuples, dicts, dataclasses)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

#: enough to describe any layer; a list of hundreds of tensors (a KV cache) is cut short
MAX_LEAVES = 16


def tensor_leaves(value: Any, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The tensors in `value`, depth first, at most `MAX_LEAVES`."""
    if out is None:
        out = []
    if len(out) >= MAX_LEAVES:
        return out
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            tensor_leaves(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            tensor_leaves(v, out)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            tensor_leaves(getattr(value, f.name), out)
    return out


def signature(tensors: list[torch.Tensor]) -> tuple[Any, ...]:
    return tuple((t.shape, t.dtype) for t in tensors)


def shapes(tensors: list[torch.Tensor]) -> list[list[int]]:
    return [list(t.shape) for t in tensors]


def dtype_names(tensors: list[torch.Tensor]) -> list[str]:
    return [str(t.dtype).removeprefix("torch.") for t in tensors]


def nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def first_float(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    for t in tensors:
        if t.is_floating_point() and t.numel() > 0:
            return t
    return None
