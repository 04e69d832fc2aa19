"""Attention, observed without changing it.

Four sources, all summarised the same way (per layer and head: mean row entropy
normalised by the log of the number of keys each query may see, mean max weight):

- `nn.MultiheadAttention` (also inside `nn.TransformerEncoderLayer`/`DecoderLayer`, which
  call it with `need_weights=False`): a forward hook sees the module's own inputs and masks
  and, on sampled training steps, recomputes the weights from its projection weights. The
  module's call is never changed (`need_weights` stays as the caller set it).
- `torch.nn.functional.scaled_dot_product_attention` as hand-written attention calls it:
  wrapped for the duration of the block. The original always computes the output; on
  sampled steps the weights are recomputed on the side and attributed to the innermost
  watched module in flight. Code that did `from torch.nn.functional import
  scaled_dot_product_attention` at import time holds the unwrapped function and is not
  seen: call `lens.log_attention(name, weights)` there.
- attention written out by hand (`softmax(q @ k^T * scale)`, nanoGPT's manual path,
  annotated-transformer's `attention()`): recognised on sampled training forwards by
  `_manual_attention.py`, which summarises the softmax's own output.
- `lens.log_attention(name, weights)` for anything else.

Every recomputation runs under `no_grad`, without dropout (no RNG is consumed) and in
float32, on at most `MAX_ELEMENTS` score entries (fewer samples, then strided query
rows). Only per-head statistics (deferred, read back in bulk) and one small weight map per
layer (one sample, one head, at most `MAP_SIZE` x `MAP_SIZE`, the first and the latest
observation) are kept: never activations or graphs.
"""

from __future__ import annotations

import functools
import json
import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._attention_math import (
    _as_bhls,
    _combine,
    _mask_kind,
    _no_autocast,
    _samples_to_keep,
    _softmax,
    _thin,
)
from ._base import Probe, guarded, hook
from ._state import WatchState, compiling, hook_modules, suspended_here, transformed

#: side of the weight map kept per layer for attention.png
MAP_SIZE = 64
#: an additive mask entry at or below this is a masked key (-inf, or the common -1e9)
MASKED_BELOW = -1e4


class AttentionProbe(Probe):
    name = "attention"
    writes = ("attention", "attention_layers", "attention_maps")

    def __init__(self, state: WatchState):
        super().__init__(state)
        self.mha_names: set[str] = set()
        self._recorded: dict[str, int] = {}  # module -> last step recorded (once per step)
        self._maps: dict[str, list[Any]] = {}  # module -> [first (step, map), latest]
        self._layers_seen: set[str] = set()
        self._failed = False

    def install(self) -> None:
        mha = {}
        for name, module in self.state.model.named_modules():
            if isinstance(module, nn.MultiheadAttention):
                self.mha_names.add(name)
                mha[module] = self._mha_hook(name)
        if mha:
            self.handles.append(hook_modules(mha, with_kwargs=True, owner=self))
        self.handles.append(_patch_sdpa(self))
        from ._manual_attention import ManualAttention

        self.handles.extend(ManualAttention(self).install())

    # --- sources ---------------------------------------------------------------------
    def _wanted(self, name: str) -> bool:
        state = self.state
        if compiling() or transformed() or not state.sampled or suspended_here():
            return False
        if state.split() != "train":
            return False
        return self._recorded.get(name) != state.step

    def _mha_hook(self, name: str):
        def hook(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> None:
            if not self._wanted(name):
                return
            self._guarded(self._record_mha, name, module, args, kwargs, output)

        return hook

    @hook
    def on_sdpa(self, args: tuple, kwargs: dict, output: Any) -> None:
        stack = self.state.call_stack
        if not stack or threading.get_ident() not in self.state.threads:
            return
        name = stack[-1][0]
        if name in self.mha_names or not self._wanted(name):
            return  # nn.MultiheadAttention calls SDPA itself; its hook records it
        self._guarded(self._record_sdpa, name, args, kwargs, output)

    @guarded
    def log(self, name: str, weights: torch.Tensor, mask: torch.Tensor | None) -> None:
        if not self._wanted(name):
            return
        w = weights.detach()
        if w.dim() < 2:
            raise ValueError(f"attention weights need [..., queries, keys], got {list(w.shape)}")
        with torch.no_grad():
            w4 = _as_bhls(w)
            keep = _samples_to_keep(*w4.shape)
            w4 = w4[:keep].float()
            allowed = None
            if mask is not None:
                allowed = _as_bhls(torch.broadcast_to(mask.detach().bool(), w.shape))[:keep]
            w4, allowed = _thin(w4, allowed)
            self._summarise(name, "log_attention", w4, allowed)
        kind = "mask" if mask is not None else None
        self._layer_once(
            name, "log_attention", None, None, None, None, w4.shape[1], None, None, kind
        )

    def _guarded(self, fn: Any, *args: Any) -> None:
        # a recording problem must never break the user's training; say so once
        try:
            fn(*args)
        except Exception as err:
            if not self._failed:
                self._failed = True
                self.state.event(
                    "probe_error",
                    args[0],
                    f"attention probe skipped: {type(err).__name__}: {err}",
                )

    def note_empty_rows(self, name: str, source: str, allowed: torch.Tensor) -> None:
        """Query rows whose mask allows no key: their softmax over only -inf is NaN. Read
        once per layer, at its first observation (one host read, as for the mask kind).
        A mask it cannot read costs this note only, never the layer's summary."""
        try:
            found = empty_rows(allowed)
        except Exception:
            return
        if found is not None:
            rows, of, inverted = found
            self.state.extra_meta.setdefault("attention_empty_rows", {})[name] = {
                "rows": rows,
                "of": of,
                # every row sees only the keys after it: a causal mask the wrong way round
                "inverted_causal": inverted,
                "step": self.state.step,
                "source": source,
            }

    # --- nn.MultiheadAttention -----------------------------------------------------------
    def _record_mha(
        self, name: str, m: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any
    ) -> None:
        names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
        call = dict(zip(names, args, strict=False))
        call.update(kwargs)
        query, key = call["query"], call["key"]
        kpm, attn_mask = call.get("key_padding_mask"), call.get("attn_mask")
        is_causal = bool(call.get("is_causal", False) if len(args) < 8 else args[7])
        if query.is_nested or key.is_nested or m.bias_k is not None or m.add_zero_attn:
            self.state.event(
                "attention_unsupported",
                name,
                "nn.MultiheadAttention with nested tensors, add_bias_kv or add_zero_attn "
                "is not summarised",
            )
            return
        with torch.no_grad(), _no_autocast(query):
            unbatched = query.dim() == 2
            q_in, k_in = query.detach(), key.detach()
            if unbatched:
                q_in, k_in = q_in.unsqueeze(1), k_in.unsqueeze(1)  # [L, 1, E]
            if m.batch_first and not unbatched:
                q_in, k_in = q_in.transpose(0, 1), k_in.transpose(0, 1)
            # now [L, N, E]: sequence first, as F.multi_head_attention_forward works
            E, H = m.embed_dim, m.num_heads
            d = E // H
            if m._qkv_same_embed_dim:
                wq, wk = m.in_proj_weight[:E], m.in_proj_weight[E : 2 * E]
            else:
                wq, wk = m.q_proj_weight, m.k_proj_weight
            bq = bk = None
            if m.in_proj_bias is not None:
                bq, bk = m.in_proj_bias[:E], m.in_proj_bias[E : 2 * E]
            L, N = q_in.shape[0], q_in.shape[1]
            S = k_in.shape[0]
            keep = _samples_to_keep(N, H, L, S)
            q_in, k_in = q_in[:, :keep].float(), k_in[:, :keep].float()
            q = F.linear(q_in, wq.detach().float(), None if bq is None else bq.detach().float())
            k = F.linear(k_in, wk.detach().float(), None if bk is None else bk.detach().float())
            q = q.view(L, keep, H, d).permute(1, 2, 0, 3)  # [N, H, L, d]
            k = k.view(S, keep, H, d).permute(1, 2, 0, 3)
            scores = q @ k.transpose(-2, -1) * (d**-0.5)
            allowed = None
            if attn_mask is not None:
                am = attn_mask.detach()
                am = am.view(-1, H, L, S)[:keep] if am.dim() == 3 else am.view(1, 1, L, S)
                allowed = _combine(allowed, ~am if am.dtype == torch.bool else am > MASKED_BELOW)
                if am.dtype != torch.bool:
                    scores = scores + am.float()
            elif is_causal:
                allowed = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()[None, None]
            if kpm is not None:
                p = kpm.detach()
                p = p.view(1, S) if unbatched else p[:keep]
                ok = ~p if p.dtype == torch.bool else p > MASKED_BELOW
                allowed = _combine(allowed, ok[:, None, None, :])
                if p.dtype != torch.bool:
                    scores = scores + p.float()[:, None, None, :]
            if allowed is not None and name not in self._layers_seen:
                self.note_empty_rows(
                    name, "MultiheadAttention", torch.broadcast_to(allowed, scores.shape)
                )
            scores, allowed = _thin(scores, allowed)
            weights = _softmax(scores, allowed)
            self._summarise(name, "MultiheadAttention", weights, allowed)
        out = output[0] if isinstance(output, tuple) else output
        shape_of = (lambda n, s: [n, H, s, d]) if not unbatched else (lambda n, s: [H, s, d])
        self._layer_once(
            name,
            "MultiheadAttention",
            shape_of(N, L),
            shape_of(N, S),
            shape_of(N, S),
            list(out.shape) if isinstance(out, torch.Tensor) else None,
            H,
            d,
            d**-0.5,
            _mask_kind(attn_mask, kpm, is_causal),
        )

    # --- scaled_dot_product_attention -------------------------------------------------------
    def _record_sdpa(self, name: str, args: tuple, kwargs: dict, output: Any) -> None:
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        call = dict(zip(names, args, strict=False))
        call.update(kwargs)
        query, key, value = call["query"], call["key"], call["value"]
        attn_mask, is_causal = call.get("attn_mask"), bool(call.get("is_causal", False))
        scale, gqa = call.get("scale"), bool(call.get("enable_gqa", False))
        if query.is_nested or query.dim() < 2:
            return
        L, S, E = query.shape[-2], key.shape[-2], query.shape[-1]
        scale = E**-0.5 if scale is None else float(scale)
        with torch.no_grad(), _no_autocast(query):
            q, k = query.detach(), key.detach()
            if gqa and q.dim() >= 3 and k.shape[-3] != q.shape[-3]:
                k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
            lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
            q4, k4 = _as_bhls(q.expand(*lead, L, E)), _as_bhls(k.expand(*lead, S, E))
            B, H = q4.shape[0], q4.shape[1]
            keep = _samples_to_keep(B, H, L, S)
            scores = (q4[:keep].float() @ k4[:keep].float().transpose(-2, -1)) * scale
            allowed = None
            if is_causal:
                allowed = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()[None, None]
            elif attn_mask is not None:
                am = _as_bhls(torch.broadcast_to(attn_mask.detach(), (*lead, L, S)))[:keep]
                if am.dtype == torch.bool:
                    allowed = am  # SDPA: True takes part (the opposite of nn.MultiheadAttention)
                else:
                    allowed = am > MASKED_BELOW
                    scores = scores + am.float()
            if allowed is not None and name not in self._layers_seen:
                self.note_empty_rows(
                    name, "scaled_dot_product_attention", torch.broadcast_to(allowed, scores.shape)
                )
            scores, allowed = _thin(scores, allowed)
            weights = _softmax(scores, allowed)
            self._summarise(name, "scaled_dot_product_attention", weights, allowed)
        mask = "causal" if is_causal else ("attn_mask" if attn_mask is not None else None)
        self._layer_once(
            name,
            "scaled_dot_product_attention",
            list(query.shape),
            list(key.shape),
            list(value.shape),
            list(output.shape) if isinstance(output, torch.Tensor) else None,
            H,
            E,
            scale,
            mask,
        )

    # --- summaries -----------------------------------------------------------------------
    def _summarise(
        self, name: str, source: str, weights: torch.Tensor, allowed: torch.Tensor | None
    ) -> None:
        """Per head: mean normalised entropy and max weight over rows with >= 2 keys."""
        state = self.state
        self._recorded[name] = state.step
        B, H, L, S = weights.shape
        if allowed is None:
            n = torch.full((1, 1, 1), float(S), device=weights.device)
        else:
            n = torch.broadcast_to(allowed, weights.shape).sum(-1, dtype=torch.float32)
        # w * log(w) with 0 log 0 = 0 (a zero weight times log of the smallest normal
        # float is 0) and NaN kept: 3-4x faster than `xlogy` on CPU, the costliest kernel
        # of a sampled transformer step
        tiny = torch.finfo(weights.dtype).tiny
        ent = -(weights * weights.clamp_min(tiny).log()).sum(-1)
        valid = (n >= 2) & torch.isfinite(ent)
        valid = torch.broadcast_to(valid, (B, H, L))
        norm = ent / torch.log(n.clamp(min=2))
        maxw = weights.amax(-1)
        rows = valid.sum((0, 2), dtype=torch.float32)
        denom = rows.clamp(min=1)
        zero = torch.zeros((), device=weights.device)
        stats = torch.stack(
            [
                torch.where(valid, norm, zero).sum((0, 2)) / denom,
                torch.where(valid, maxw, zero).sum((0, 2)) / denom,
                rows,
            ],
            dim=1,
        )
        state.deferred.add(
            state.tables["attention"], [(state.step, name, source, h) for h in range(H)], stats
        )
        sample = weights[0, 0, :MAP_SIZE, :MAP_SIZE].clone()
        kept = self._maps.setdefault(name, [None, None])
        if kept[0] is None:
            kept[0] = (state.step, sample)
        else:
            kept[1] = (state.step, sample)

    def _layer_once(
        self,
        name: str,
        source: str,
        q: list[int] | None,
        k: list[int] | None,
        v: list[int] | None,
        out: list[int] | None,
        heads: int,
        head_dim: int | None,
        scale: float | None,
        mask: str | None,
    ) -> None:
        if name in self._layers_seen:
            return
        self._layers_seen.add(name)
        self.state.tables["attention_layers"].append(
            self.state.step,
            name,
            source,
            json.dumps(q),
            json.dumps(k),
            json.dumps(v),
            json.dumps(out),
            int(heads),
            head_dim,
            scale,
            mask,
        )

    def finish(self, exc: BaseException | None) -> None:
        table = self.state.tables["attention_maps"]
        for name, kept in self._maps.items():
            for item in kept:
                if item is not None:
                    step, m = item
                    values = [[round(v, 5) for v in row] for row in m.cpu().tolist()]
                    table.append(step, name, 0, 0, json.dumps(values))
        self._maps.clear()


# --- the scaled_dot_product_attention wrapper -----------------------------------------------
# One wrapper while any block is active, whatever order blocks end in: each probe listens
# while its block runs; the last one to leave puts the original back.
_LISTENERS: list[AttentionProbe] = []
_PATCH: list[Any] = []  # [original, wrapper] while patched


class _SdpaHandle:
    def __init__(self, probe: AttentionProbe):
        self.probe = probe

    def remove(self) -> None:
        if self.probe in _LISTENERS:
            _LISTENERS.remove(self.probe)
        if not _LISTENERS and _PATCH:
            original, wrapper = _PATCH
            _PATCH.clear()
            if F.scaled_dot_product_attention is wrapper:
                F.scaled_dot_product_attention = original
            # else someone wrapped ours since: leave theirs; ours now only passes through


def _patch_sdpa(probe: AttentionProbe) -> _SdpaHandle:
    if not _PATCH:
        original = F.scaled_dot_product_attention

        @functools.wraps(original)
        def scaled_dot_product_attention(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if _LISTENERS and not compiling() and not transformed() and not suspended_here():
                for listener in tuple(_LISTENERS):
                    listener.on_sdpa(args, kwargs, out)
            return out

        scaled_dot_product_attention.__trainlens_wrapper__ = True  # type: ignore[attr-defined]
        F.scaled_dot_product_attention = scaled_dot_product_attention
        _PATCH[:] = [original, scaled_dot_product_attention]
    _LISTENERS.append(probe)
    return _SdpaHandle(probe)


def sdpa_is_patched() -> bool:
    return bool(getattr(F.scaled_dot_product_attention, "__trainlens_wrapper__", False))


def empty_rows(allowed: torch.Tensor) -> tuple[int, int, bool] | None:
    """(query rows of the worst sequence and head that see no key, rows per sequence,
    whether every row sees only the keys after it), or None when every row sees one."""
    L, S = allowed.shape[-2:]
    rows = ~allowed.any(-1)
    empty = int(rows.reshape(-1, L).sum(1).max()) if L else 0
    if not empty:
        return None
    future = torch.ones(L, S, dtype=torch.bool, device=allowed.device).triu(S - L + 1)
    return empty, L, bool((allowed == future).all())
