"""Tensor helpers shared by the attention probes (built-in kinds and hand-written attention):
a leaf, so the two probe modules never import each other."""

from __future__ import annotations

import math
from typing import Any

import torch

#: score entries one recomputation may build (samples first, then query rows are thinned)
MAX_ELEMENTS = 1 << 21


# --- tensor helpers ------------------------------------------------------------------------
def _as_bhls(t: torch.Tensor) -> torch.Tensor:
    """[..., L, S] as [batch, heads, L, S]: dim -3 is the head, the rest folds into batch."""
    if t.dim() == 2:
        return t[None, None]
    if t.dim() == 3:
        return t[:, None]
    return t.reshape(-1, *t.shape[-3:])


def _samples_to_keep(n: int, h: int, q: int, k: int) -> int:
    return max(1, min(n, MAX_ELEMENTS // max(1, h * q * k)))


def _thin(scores: torch.Tensor, allowed: torch.Tensor | None):
    """Keep every s-th query row when one sample alone exceeds the budget."""
    stride = math.ceil(scores.numel() / MAX_ELEMENTS)
    if stride <= 1:
        return scores, allowed
    scores = scores[:, :, ::stride]
    if allowed is not None and allowed.shape[-2] > 1:
        allowed = allowed[:, :, ::stride]
    return scores, allowed


def _combine(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return b if a is None else a & b


def _softmax(scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -math.inf)
    return torch.softmax(scores, dim=-1)


def _mask_kind(attn_mask: Any, kpm: Any, is_causal: bool) -> str | None:
    kinds = []
    if attn_mask is not None:
        kinds.append("causal" if is_causal else "attn_mask")
    if kpm is not None:
        kinds.append("key_padding_mask")
    return "+".join(kinds) or None


class _no_autocast:
    """Recompute in float32 even inside the user's autocast region."""

    def __init__(self, like: torch.Tensor):
        self._ctx = torch.autocast(like.device.type, enabled=False)

    def __enter__(self) -> None:
        self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)
