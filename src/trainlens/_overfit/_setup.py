"""The Setup contract (what an overfit-one-batch factory returns) and the batch's forms."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._errors import UsageError


@dataclass
class Setup:
    """What an overfit-one-batch factory returns: the model, one batch, the loss.

    `batch` is `(inputs, targets)`; `inputs` may be a tensor, a tuple of positional
    arguments or a dict of keyword arguments for the model. Without an `optimizer`,
    Adam at lr 1e-3 is used.
    """

    model: nn.Module
    batch: tuple[Any, Any]
    loss_fn: Callable[..., torch.Tensor]
    optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def coerce(cls, value: Any, where: str = "the setup") -> Setup:
        """A `Setup`, or a dict with its keys, checked; `UsageError` says what is wrong."""
        if isinstance(value, Setup):
            setup = value
        elif isinstance(value, Mapping):
            keys = {f.name for f in dataclasses.fields(cls)}
            missing = {"model", "batch", "loss_fn"} - value.keys()
            unknown = set(value) - keys
            if missing or unknown:
                bits = []
                if missing:
                    bits.append(f"missing {sorted(missing)}")
                if unknown:
                    bits.append(f"unknown {sorted(map(str, unknown))}")
                raise UsageError(
                    f"{where} is a dict with {', '.join(bits)} keys; it needs model, batch, "
                    "loss_fn (and optionally optimizer)"
                )
            setup = cls(**value)
        else:
            raise UsageError(
                f"{where} is a {type(value).__name__}; return trainlens.Setup(model=..., "
                "batch=(inputs, targets), loss_fn=...) or a dict with those keys"
            )
        setup.check(where)
        return setup

    def check(self, where: str = "the setup") -> None:
        if not isinstance(self.model, nn.Module):
            raise UsageError(
                f"model in {where} must be a torch.nn.Module, got {type(self.model).__name__}"
            )
        batch = self.batch
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            got = (
                f"a {len(batch)}-item {type(batch).__name__}"
                if isinstance(batch, (tuple, list))
                else f"a {type(batch).__name__}"
            )
            raise UsageError(f"batch in {where} must be a pair (inputs, targets), got {got}")
        if not callable(self.loss_fn):
            raise UsageError(
                f"loss_fn in {where} must be callable, e.g. nn.CrossEntropyLoss(), got "
                f"{type(self.loss_fn).__name__}"
            )
        if self.optimizer is not None and not isinstance(self.optimizer, torch.optim.Optimizer):
            raise UsageError(
                f"optimizer in {where} must be a torch.optim.Optimizer or None, got "
                f"{type(self.optimizer).__name__}"
            )


def call_model(model: nn.Module, inputs: Any) -> Any:
    """The model on `inputs` in the form the contract allows: tensor, tuple or dict."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def clone_batch(value: Any) -> Any:
    """The batch as the caller gave it, safe from in-place edits in the model."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(clone_batch(v) for v in value)
    if isinstance(value, list):
        return [clone_batch(v) for v in value]
    if isinstance(value, Mapping):
        return {k: clone_batch(v) for k, v in value.items()}
    return value


def batch_size(targets: Any) -> int | None:
    if isinstance(targets, torch.Tensor) and targets.dim() >= 1:
        return int(targets.shape[0])
    return None
