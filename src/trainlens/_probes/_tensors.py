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


def has_values(t: torch.Tensor) -> bool:
    """A plain tensor whose values statistics can be taken of: strided, not nested, not
    on the `meta` device (sparse COO/CSR and nested tensors lack most reductions, and a
    meta tensor has no values at all)."""
    # `is_meta`, not `device.type`: no device object made on every call
    return t.layout == torch.strided and not t.is_nested and not t.is_meta


def distinct(t: torch.Tensor) -> torch.Tensor:
    """The elements of a broadcast view (`expand`, stride 0) without their repeats.

    Each element of the base repeats equally often, so the mean, spread, range and
    finiteness are those of the view, at the cost of the real data: statistics of
    `x[:1].expand(2**40, d)` must not sum 2**40 rows.
    """
    for d, (size, stride) in enumerate(zip(t.shape, t.stride(), strict=True)):
        if stride == 0 and size > 1:
            t = t.narrow(d, 0, 1)
    return t


def _dim(d: Any) -> Any:
    return d if type(d) is int else str(d)  # a nested tensor's ragged dim is symbolic


def signature(tensors: list[torch.Tensor]) -> tuple[Any, ...]:
    return tuple((tuple(_dim(d) for d in t.shape), t.dtype) for t in tensors)


def shapes(tensors: list[torch.Tensor]) -> list[list[int]]:
    return [[_dim(d) for d in t.shape] for t in tensors]


def dtype_names(tensors: list[torch.Tensor]) -> list[str]:
    return [str(t.dtype).removeprefix("torch.") for t in tensors]


def nbytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the tensors' elements (sparse: the stored values; nested: left out)."""
    total = 0
    for t in tensors:
        if t.is_nested:
            continue
        if t.layout != torch.strided:
            t = t.values()
        total += t.numel() * t.element_size()
    return total


def first_float(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    for t in tensors:
        if t.is_floating_point() and has_values(t) and t.numel() > 0:
            return t
    return None


def detached(t: torch.Tensor) -> torch.Tensor:
    """`t` without its graph: a tensor outside autograd (data, targets) as it is, since a
    `detach()` is one more op on every sampled step."""
    return t.detach() if t.requires_grad else t


def dense_values(t: torch.Tensor) -> torch.Tensor:
    """What a norm of `t` is taken of: the stored values of a sparse tensor, outside any
    graph (a gradient made with `backward(create_graph=True)` has one)."""
    if t.requires_grad:
        t = t.detach()
    if t.layout == torch.sparse_coo:
        return t.coalesce().values()
    if t.layout != torch.strided:
        return t.values()
    return t


def version(t: torch.Tensor) -> int:
    """`t._version`, which in-place writes raise; -1 for an inference tensor (made under
    `torch.inference_mode()`, an evaluation loop's usual context), which keeps none."""
    return -1 if t.is_inference() else t._version


_LOW = (torch.float16, torch.bfloat16)
_WIDENED = {torch.float32, *_LOW}


def float32_norms(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """L2 norms as float32 scalars, in bulk, for any floating or complex dtype.

    `torch._foreach_norm(..., dtype=float32)` refuses double and complex tensors (that
    would narrow); half precision is accumulated in float32 so a large norm does not
    overflow. Tensors of one kind go through one `_foreach_norm` call.
    """
    # a set of the dtypes, not a generator: one Python frame, not one resumption a tensor
    if {t.dtype for t in tensors} <= _WIDENED:
        return list(torch._foreach_norm(tensors, 2, dtype=torch.float32)) if tensors else []
    out: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[bool, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.dtype == torch.float32 or t.dtype in _LOW, []).append(i)
    for widen, idx in groups.items():
        group = [tensors[i] for i in idx]
        if widen:
            norms = torch._foreach_norm(group, 2, dtype=torch.float32)
        else:
            norms = [n.to(torch.float32) for n in torch._foreach_norm(group, 2)]
        for i, n in zip(idx, norms, strict=True):
            out[i] = n
    return out  # type: ignore[return-value]


def int_range(ins: list[torch.Tensor]) -> list[int] | None:
    """Min and max of an integer input (token ids, class targets): an embedding's or a
    loss's crash needs them. None where they cannot be read: after a CUDA device-side
    assert every kernel raises, and the failure record must not be lost to it."""
    for t in ins:
        if not t.is_floating_point() and not t.is_complex() and has_values(t) and t.numel() > 0:
            try:
                with torch.no_grad():
                    return [int(t.min()), int(t.max())]
            except RuntimeError:
                return None
    return None
