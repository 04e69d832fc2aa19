"""Run metadata: what the model, its parameters and the optimizer are, as plain JSON."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

#: layer settings worth knowing when a shape, an init or a step goes wrong
_ATTRS = (
    "in_features",
    "out_features",
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "groups",
    "num_embeddings",
    "embedding_dim",
    "padding_idx",
    "normalized_shape",
    "num_features",
    "num_channels",
    "num_groups",
    "embed_dim",
    "num_heads",
    "batch_first",
    "input_size",
    "hidden_size",
    "num_layers",
    "bidirectional",
    "p",
    "inplace",
    "dim",
    "negative_slope",
    "reduction",
    "ignore_index",
    "label_smoothing",
)


def _plain(value: Any) -> Any:
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (tuple, list, torch.Size)):
        items = [_plain(v) for v in value]
        return items if all(i is not _SKIP for i in items) else _SKIP
    return _SKIP


_SKIP = object()


def module_attrs(module: nn.Module) -> dict[str, Any]:
    out = {}
    for name in _ATTRS:
        value = _plain(getattr(module, name, _SKIP)) if hasattr(module, name) else _SKIP
        if value is not _SKIP:
            out[name] = value
    return out


def describe_modules(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "type": type(m).__name__,
            "leaf": next(m.children(), None) is None,
            "params": sum(p.numel() for p in m.parameters(recurse=False) if not is_lazy(p)),
            "attrs": module_attrs(m),
        }
        for name, m in model.named_modules()
    }


def describe_params(model: nn.Module, optimizer: Any) -> dict[str, dict[str, Any]]:
    in_opt = optimizer_param_ids(optimizer)
    frozen = frozen_weight_stats(model)
    return {
        name: {
            "shape": None if is_lazy(p) else list(p.shape),
            "numel": 0 if is_lazy(p) else p.numel(),
            "dtype": str(p.dtype).removeprefix("torch."),
            "device": str(p.device),
            "requires_grad": p.requires_grad,
            "in_optimizer": None if optimizer is None else id(p) in in_opt,
            "module": name.rpartition(".")[0],
            **frozen.get(name, {}),
        }
        for name, p in model.named_parameters()
    }


def describe_unregistered(model: nn.Module, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The modules with trainable weights of their own that ran inside the model's forward
    without being its submodules (`WatchState.foreign_modules`), with where the model holds
    them (`blocks[2]`: a plain list; None: made inside forward, or held elsewhere)."""
    out = []
    for entry in found:
        module = entry["ref"]()
        try:
            where = _held_at(model, module) if module is not None else None
        except Exception:  # an attribute that cannot be walked: the place stays unknown
            where = None
        out.append({"where": where, **{k: v for k, v in entry.items() if k != "ref"}})
    return out


def _held_at(model: nn.Module, target: nn.Module) -> str | None:
    """`blocks[2]` for a module held in a list attribute `blocks` of the model (or of one of
    its submodules, dotted), `heads['a']` in a dict; None when not found one level down."""
    for name, owner in model.named_modules():
        prefix = f"{name}." if name else ""
        for attr, value in vars(owner).items():
            if attr.startswith("_"):
                continue
            if value is target:
                return f"{prefix}{attr}"
            if isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if item is target:
                        return f"{prefix}{attr}[{i}]"
            elif isinstance(value, dict):
                for key, item in value.items():
                    if item is target:
                        return f"{prefix}{attr}[{key!r}]"
    return None


def tied_params(model: nn.Module) -> dict[str, str]:
    """Parameter names that are the same tensor as an earlier one (a language model's head
    tied to its embedding: `lm_head.weight` -> `transformer.wte.weight`); `named_parameters`
    lists each tensor once, under its first name."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied[name] = first[id(p)]
        else:
            first[id(p)] = name
    return tied


def frozen_weight_stats(model: nn.Module) -> dict[str, dict[str, float]]:
    """`rms` and `absmax` of each frozen (requires_grad=False) parameter at entry.

    A frozen part that still looks like a fresh initialisation was probably never meant to
    be frozen (the rules compare with the layer's default init). Once per run, frozen
    parameters only, in bulk: one read-back. Anything odd (meta tensors, sparse, a failing
    kernel) just leaves the numbers out.
    """
    named = [
        (n, p)
        for n, p in model.named_parameters()
        if not p.requires_grad and not is_lazy(p) and p.numel() > 0 and p.layout == torch.strided
        and p.device.type != "meta" and p.is_floating_point()
    ]  # fmt: skip
    if not named:
        return {}
    try:
        with torch.no_grad():
            ts = [p.detach() for _, p in named]
            l2 = torch._foreach_norm(ts, 2)
            top = torch._foreach_norm(ts, math.inf)
            if len({t.device for t in ts}) == 1:  # the usual case: one read-back
                rows = torch.stack([torch.stack(l2), torch.stack(top)]).float().T.tolist()
            else:
                rows = [[float(a), float(b)] for a, b in zip(l2, top, strict=True)]
    except Exception:  # statistics are a nicety: never break the user's run for them
        return {}
    return {
        n: {"rms": l2v / math.sqrt(p.numel()), "absmax": mx}
        for (n, p), (l2v, mx) in zip(named, rows, strict=True)
        if math.isfinite(l2v) and math.isfinite(mx)
    }


#: weight matrices looked at for identical rows (the first ones, in model order)
MAX_SYMMETRY_CHECKS = 256


def identical_rows(model: nn.Module) -> dict[str, int]:
    """Trainable weights (2-d or more) whose rows, one per unit, are all the same and not
    all zero, at the end of the run: a constant initialisation (`nn.init.constant_`)
    gives every unit the same output and the same gradient, so they never part. Random
    weights never have two equal rows. Once per run, in bulk: the first rows of every
    weight in one read-back, then all the rows of those that matched. All-zero weights are
    left to the gradient checks (behind a ReLU they get no gradient at all)."""
    try:  # a nicety: an odd parameter costs this key of run.json, never the drill
        named = [
            (n, p)
            for n, p in model.named_parameters()
            if p.requires_grad and not is_lazy(p) and p.dim() >= 2 and p.shape[0] >= 2
            and p.layout == torch.strided and p.device.type != "meta" and p.is_floating_point()
            and type(p.detach()) is torch.Tensor  # a sharded DTensor would reduce across ranks
        ][:MAX_SYMMETRY_CHECKS]  # fmt: skip
        # the first few rows first (random rows never match: this clears nearly every
        # weight at a fraction of a full pass), then every row of those that matched
        few = _rows_equal(named, SYMMETRY_PROBE_ROWS)
        return {n: int(p.shape[0]) for n, p in _rows_equal(few, None)}
    except Exception:
        return {}


#: rows compared first, in `identical_rows`
SYMMETRY_PROBE_ROWS = 4


def _rows_equal(
    named: list[tuple[str, torch.Tensor]], rows: int | None
) -> list[tuple[str, torch.Tensor]]:
    """Those whose first `rows` rows (all of them: None) are one row, not all zero; one
    read-back when they share a device."""
    if not named:
        return []
    with torch.no_grad():
        spreads, tops = [], []
        for _, p in named:
            w = p.detach().flatten(1)[:rows]
            spreads.append((w - w[:1]).abs().amax().float())
            tops.append(w.abs().amax().float())
        if len({t.device for t in spreads}) == 1:
            pairs = torch.stack([torch.stack(spreads), torch.stack(tops)]).T.tolist()
        else:
            pairs = [[float(a), float(b)] for a, b in zip(spreads, tops, strict=True)]
    return [
        item
        for item, (spread, top) in zip(named, pairs, strict=True)
        if top > 0 and spread <= 1e-6 * top
    ]


def optimizer_param_ids(optimizer: Any) -> set[int]:
    if optimizer is None:
        return set()
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def describe_optimizer(optimizer: Any) -> dict[str, Any] | None:
    if optimizer is None:
        return None
    groups = []
    for group in optimizer.param_groups:
        settings = {k: _plain(v) for k, v in group.items() if k != "params"}
        settings = {k: v for k, v in settings.items() if v is not _SKIP}
        settings["num_params"] = sum(p.numel() for p in group["params"] if not is_lazy(p))
        groups.append(settings)
    return {"class": type(optimizer).__name__, "param_groups": groups}
