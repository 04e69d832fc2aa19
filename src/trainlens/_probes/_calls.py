"""What a module call can be recognised by, and the module calls an exception unwound.

`call_signature` keys a call of the watched model by what decides the shapes inside it:
the shapes, dtypes and devices of its tensors, its plain arguments (flags, sizes), the
grad and autocast modes and the model's mode. A call whose key was seen before, with
every module of the model hooked, goes through the same shapes again: the forward
dispatch lets it run without the per-module hooks on unsampled steps (`_base`).

`module_calls` reads the module calls an exception unwound through from its traceback,
the frames of `nn.Module._call_impl` (each holds the module and the arguments it got):
where the per-module hooks were off, it still says which module raised, on what.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

#: tensors and plain values a signature looks at; a call with more is never keyed
MAX_ITEMS = 64
_PLAIN = (bool, int, float, str, type(None))
_CALL_IMPL = getattr(nn.Module._call_impl, "__code__", None)


class _Unkeyed(Exception):
    pass


_ONE = (tuple, 1)  # what `_key` puts first for a tuple of one argument


def call_signature(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A hashable key of the call, or None when an argument is of a kind it does not know
    (an object that may hold tensors of any shape: such calls are never keyed)."""
    modes = (
        torch.is_grad_enabled(),
        module.training,
        torch.is_autocast_enabled(),
        torch.is_autocast_enabled("cpu"),
    )
    if not kwargs and len(args) == 1 and type(args[0]) is torch.Tensor:
        # the usual call, one plain tensor: the key `_key` would build, built at once
        x = args[0]
        key: tuple[Any, ...] = (*modes, _ONE, (x.shape, x.dtype, x.device, x.layout))
    else:
        items: list[Any] = list(modes)
        try:
            _key(args, items)
            if kwargs:
                for name, value in kwargs.items():
                    items.append(name)
                    _key(value, items)
        except (_Unkeyed, TypeError):
            return None
        key = tuple(items)
    try:
        hash(key)  # a symbolic size (a nested tensor's ragged dim) may not hash
    except TypeError:
        return None
    return key


def _key(value: Any, items: list[Any]) -> None:
    if len(items) > MAX_ITEMS:
        raise _Unkeyed
    if isinstance(value, torch.Tensor):
        items.append((value.shape, value.dtype, value.device, value.layout))
    elif isinstance(value, _PLAIN):
        items.append(value)
    elif isinstance(value, (tuple, list)):
        items.append((type(value), len(value)))
        for v in value:
            _key(v, items)
    elif isinstance(value, Mapping):
        items.append((type(value), len(value)))
        for k, v in value.items():
            items.append(k if isinstance(k, _PLAIN) else type(k))
            _key(v, items)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items.append(type(value))
        for f in dataclasses.fields(value):
            _key(getattr(value, f.name), items)
    else:
        raise _Unkeyed


def module_calls(
    exc: BaseException, names: dict[int, str]
) -> list[tuple[str, nn.Module, tuple[Any, ...]]]:
    """(name, module, args) of the calls of named modules `exc` unwound through, outermost
    first; empty where the frames cannot be read."""
    calls: list[tuple[str, nn.Module, tuple[Any, ...]]] = []
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code is _CALL_IMPL:
            local = frame.f_locals
            module = local.get("self")
            name = names.get(id(module))
            if name is not None:
                args = local.get("args")
                calls.append((name, module, args if isinstance(args, tuple) else ()))
        tb = tb.tb_next
    return calls
