"""What the loss is fed: evidence for a loss that does not move.

`LossInputProbe` looks at the input and target of `CrossEntropyLoss`, `NLLLoss`,
`BCEWithLogitsLoss`, `KLDivLoss` and `MSELoss` on sampled steps: whether the input rows are already
probabilities or log-probabilities (rows summing to 1, or whose exp sums to 1), and the loss
of the best constant prediction for the targets seen so far (class-prior entropy, target
variance).

A small input and target (a classifier's head, a regression batch) are copied on the
sampled step, and their statistics are taken at the read-back: every sampled step of one
loss and shape in one batched pass. Taken on the step they are some twenty small kernels,
the larger part of a small model's sampled step. A large input's (a language model's
logits) are taken on the step, by the same code on a batch of one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from ._base import Probe, guarded
from ._loss import loss_name
from ._state import WatchState
from ._tensors import detached, has_values

#: losses whose input and target reveal a bug of the input pipeline or the head
#: (KLDivLoss: whether its input is log-probabilities, as it expects; it has no prior)
CLASSIFICATION_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss, nn.BCEWithLogitsLoss, nn.KLDivLoss)
REGRESSION_LOSSES = (nn.MSELoss,)
_LOSSES = CLASSIFICATION_LOSSES + REGRESSION_LOSSES
#: the targets' running statistics (class prior, mean and variance) settle within a few
#: batches: they take in every sampled step's targets this many times, then those of
#: one sampled step in `PRIOR_EVERY` (the baseline in between is the last one computed)
PRIOR_WARMUP = 16
PRIOR_EVERY = 8
#: rows of a classification loss's input whose statistics are taken (a large-vocabulary
#: LM's logits are [batch * seq, vocab]: a slice tells probabilities from logits as well)
MAX_ROWS = 1024
#: sampled steps of each loss whose large input is also checked for normalisation over the
#: batch axis (a softmax over dim=0 in the loss code is there from the first step on); a
#: small one is checked on every sampled step, in the batched pass at the read-back
BATCH_LOOKS = 16
#: an input (the part looked at) and a target up to this many elements each are copied
#: and reduced at the read-back; larger ones are reduced on the step (copying them would
#: cost more than the kernels saved)
DEFERRED_ELEMENTS = 16_384
#: elements of one stacked block (256 KB of float32: it stays in the cache)
STACKED_ELEMENTS = 65_536
#: elements of copies held before they are reduced even without a read-back (an eval-only
#: loop never completes a step): 4 MB of float32 at most
MAX_PENDING_ELEMENTS = 1_048_576


class _Look(NamedTuple):
    """What one sampled step's look at a loss takes, decided on the step: the block
    function and its parameters, the part of the input looked at, and the host-side
    choices that keep the running statistics in step order (`update`, `reset`)."""

    block: Callable[..., torch.Tensor]
    classes: int
    x: torch.Tensor  # the part of the input whose statistics are taken
    cdim: int = 0  # the class axis of `x` (classification)
    batch_look: bool = False  # also the batch-axis deviations (classification)
    prior: bool = False  # the loss has a constant-prediction baseline of these targets
    update: bool = False  # these targets go into the running statistics
    reset: bool = False  # the running statistics start again from these targets
    ignore_index: int = -100
    smoothing: float = 0.0


class _Pending(NamedTuple):
    """One sampled step's copies, reduced at the read-back with its loss's other steps."""

    key: tuple[str, str]  # the loss's name and split: whose running statistics
    group: tuple[Any, ...]  # steps of one group stack into one pass
    sink: Any
    look: _Look
    prefix: tuple[Any, ...]
    x: torch.Tensor
    t: torch.Tensor


class LossInputProbe(Probe):
    name = "loss_inputs"
    writes = ("loss_inputs",)

    def __init__(self, state: WatchState):
        super().__init__(state)
        # keyed by the loss's name (its path in the model, else its class), not its id: a
        # loss module made anew every step (`nn.CrossEntropyLoss()(out, y)`) is one loss,
        # and its rows already share that name
        self._seen: dict[tuple[str, str], int] = {}  # (loss, split) -> last step recorded
        # (loss, split) -> the targets' running statistics: host-side counters, set on the
        # step, and device tensors, set where the statistics are taken; the prior of one
        # batch underestimates the entropy of many classes
        self._running: dict[tuple[str, str], dict[str, Any]] = {}
        self._regression_rows = _RegressionRows(state.tables["loss_inputs"])
        self._classification_rows = _ClassificationRows(state.tables["loss_inputs"])
        self._pending: list[_Pending] = []
        self._pending_elements = 0
        state.deferred.before_flush(self._reduce_pending)

    def install(self) -> None:
        self.state.forwards.loss(self, self._on_forward, sampled=True)

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self.state.sampled:
            return
        if not isinstance(module, _LOSSES) or len(args) < 2:
            return
        x, t = args[0], args[1]
        if not (isinstance(x, torch.Tensor) and isinstance(t, torch.Tensor)):
            return
        if not x.is_floating_point() or x.numel() == 0 or t.numel() == 0:
            return
        if not (has_values(x) and has_values(t)):
            return  # sparse, nested or meta: no statistics to take
        state = self.state
        split = state.split()
        name = loss_name(state, module)
        key = (name, split)
        if self._seen.get(key) == state.step:
            return  # one look per loss and step: a per-token loop stays cheap
        self._seen[key] = state.step
        running = self._running.setdefault(key, {})
        # detached tensors record no graph: no `no_grad()` context (~9 Python calls)
        x, t = detached(x), detached(t)
        if isinstance(module, nn.BCEWithLogitsLoss):
            look = _binary_look(module, x, t)
        elif isinstance(module, CLASSIFICATION_LOSSES):
            look = _classification_look(module, x, t, running)
        else:
            look = _regression_look(module, x, t, running)
        if look is None:
            return
        sink = (
            self._regression_rows if look.block is _regression_block else self._classification_rows
        )
        prefix = (state.step, split, name, type(module).__name__, look.classes)
        if _deferred(look.x, t):
            # two copies now, the statistics with the other steps' at the read-back
            xc = look.x.to(torch.float32, copy=True)
            tc = (
                t.clone() if look.block is _classification_block else t.to(torch.float32, copy=True)
            )
            group = (sink, xc.shape, tc.shape, tc.dtype, xc.device, look.batch_look)
            self._pending.append(_Pending(key, group, sink, look, prefix, xc, tc))
            self._pending_elements += xc.numel() + tc.numel()
            if self._pending_elements >= MAX_PENDING_ELEMENTS:
                self._reduce_pending()
            return
        if self._pending:
            self._reduce_pending()  # each loss's running statistics go in step order
        ts = t.unsqueeze(0)
        if look.block is not _classification_block:
            ts = ts.float()
        stats = look.block(look, look.x.unsqueeze(0).float(), ts, [look.update], running)
        state.deferred.add(sink, [prefix], stats)

    @guarded
    def _reduce_pending(self) -> None:
        """The statistics of the copies held since the last read-back: each loss's steps in
        order, consecutive steps of one shape stacked into one pass."""
        pending, self._pending = self._pending, []
        self._pending_elements = 0
        by_loss: dict[tuple[int, str], list[_Pending]] = {}
        for p in pending:
            by_loss.setdefault(p.key, []).append(p)
        add = self.state.deferred.add
        for key, steps in by_loss.items():
            running = self._running[key]
            for run in _runs(steps):
                first = run[0]
                xs = torch.stack([p.x for p in run])
                ts = torch.stack([p.t for p in run])
                stats = first.look.block(first.look, xs, ts, [p.look.update for p in run], running)
                add(first.sink, [p.prefix for p in run], stats)


def _runs(steps: list[_Pending]) -> list[list[_Pending]]:
    """Consecutive steps of one group (shapes, device, batch look), in blocks that stay in
    the cache; a reset of the running statistics starts a block."""
    runs: list[list[_Pending]] = []
    for p in steps:
        last = runs[-1] if runs else None
        if (
            last is None
            or last[0].group != p.group
            or p.look.reset
            or (len(last) + 1) * (p.x.numel() + p.t.numel()) > STACKED_ELEMENTS
        ):
            runs.append([p])
        else:
            last.append(p)
    return runs


class _RegressionRows:
    """Deferred sink: a regression loss has no row deviations (and, reduced otherwise than
    by "mean", no baseline): their NaN are put in on the host, not made on the device.
    Its values: min, max, the targets beyond them (share and mean square below, above),
    then (mean reduction) the target variance and the mean over targets of their squared
    mean, whose sum is the targets' mean square."""

    def __init__(self, table: Any):
        self.table = table

    def append(self, *row: Any) -> None:
        prefix, v = row[:5], row[5:]
        baseline = v[6] if len(v) > 6 else math.nan
        square = v[6] + v[7] if len(v) > 7 else math.nan
        rms = math.sqrt(square) if square >= 0 else math.nan  # NaN targets: NaN, not 0
        nan = math.nan
        self.table.append(*prefix, v[0], v[1], nan, nan, baseline, rms, nan, nan, *v[2:6], nan, nan)


#: a classification row's regression-only columns, put in on the host
_NO_TARGET_RANGE = (math.nan,) * 4


class _ClassificationRows:
    """Deferred sink: a classification loss has no target scale (NaN, on the host), put
    in before its two batch-axis deviations, nor targets beyond its inputs' range (NaN
    after them, before the batch's class mix, the last two of its values)."""

    def __init__(self, table: Any):
        self.table = table

    def append(self, *row: Any) -> None:
        self.table.append(*_arranged(row))

    def extend(self, rows: list[tuple[Any, ...]]) -> None:
        self.table.extend([_arranged(row) for row in rows])


def _arranged(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return (*row[:-4], math.nan, *row[-4:-2], *_NO_TARGET_RANGE, *row[-2:])


def _deferred(x: torch.Tensor, t: torch.Tensor) -> bool:
    """The part of the input looked at and the target are small enough to copy."""
    return x.numel() <= DEFERRED_ELEMENTS and t.numel() <= DEFERRED_ELEMENTS


def _update_prior(running: dict[str, Any]) -> bool:
    """Whether this sampled step adds its targets to the running statistics."""
    seen = running.get("updates", 0)
    running["updates"] = seen + 1
    return seen < PRIOR_WARMUP or seen % PRIOR_EVERY == 0


# --- on the step: what to take ----------------------------------------------------------
def _binary_look(module: nn.BCEWithLogitsLoss, x: torch.Tensor, t: torch.Tensor) -> _Look:
    # it applies the sigmoid itself: inputs all in [0, 1] are sigmoid outputs; the best
    # constant prediction (the mean target) scores its binary entropy
    plain = module.reduction == "mean" and module.weight is None and module.pos_weight is None
    prior = plain and t.shape == x.shape and t.is_floating_point() and t.dim() >= 1
    return _Look(_binary_block, 2, x.reshape(-1)[: MAX_ROWS * 64], prior=prior, update=prior)


def _classification_look(
    module: nn.Module, x: torch.Tensor, t: torch.Tensor, running: dict[str, Any]
) -> _Look:
    cdim = 1 if x.dim() >= 2 else 0
    classes = x.shape[cdim]
    # the row statistics of a slice suffice; every target counts for the prior
    part = x[:MAX_ROWS] if x.dim() >= 2 else x
    # the same over the batch axis: columns that sum to 1 are a softmax over dim=0 (a
    # large input's first sampled steps show it as well as all would)
    batch_look = x.dim() == 2 and 1 < x.shape[0] <= MAX_ROWS and classes > 1
    if batch_look and not _deferred(part, t):
        looks = running.get("batch_looks", 0)
        batch_look = looks < BATCH_LOOKS
        running["batch_looks"] = looks + batch_look
    reduction, weight = getattr(module, "reduction", "mean"), getattr(module, "weight", None)
    plain = reduction == "mean" and weight is None and not isinstance(module, nn.KLDivLoss)
    # class indices, or one probability per class (the forward succeeded: every index
    # is a class or the ignore index)
    prior = plain and (not t.is_floating_point() or t.shape == x.shape)
    # the prior is updated until there is one, then as `_update_prior` says
    update = prior and (_update_prior(running) or not running.get("primed"))
    running["primed"] = running.get("primed") or update
    return _Look(
        _classification_block, classes, part, cdim, batch_look, prior, update, False,
        getattr(module, "ignore_index", -100),
        float(getattr(module, "label_smoothing", 0.0) or 0.0),
    )  # fmt: skip


def _regression_look(
    module: nn.Module, x: torch.Tensor, t: torch.Tensor, running: dict[str, Any]
) -> _Look | None:
    if t.shape != x.shape or t.dim() == 0 or t.shape[0] < 2 or not t.is_floating_point():
        return None
    if module.reduction != "mean":
        return _Look(_regression_block, 0, x)  # no baseline: `_RegressionRows` fills in NaN
    if running.get("shape") != t.shape[1:]:
        running.update(shape=t.shape[1:], updates=0)
        return _Look(_regression_block, 0, x, prior=True, update=True, reset=True)
    return _Look(_regression_block, 0, x, prior=True, update=_update_prior(running))


# --- the statistics of k steps at once: xs [k, ...], ts [k, ...] --------------------------
def _classification_block(
    look: _Look, xs: torch.Tensor, ts: torch.Tensor, updates: list[bool], running: dict[str, Any]
) -> torch.Tensor:
    """[k, 9]: min, max, row deviations (sum - 1, logsumexp), baseline, batch deviations,
    the batch's class mix (entropy, targets)."""
    k = xs.shape[0]
    cdim = look.cdim + 1
    # few kernels: both row deviations in one stack, one |.| and one mean
    rows = torch.stack([xs.sum(cdim) - 1, torch.logsumexp(xs, cdim)], 1)
    devs = rows.abs().reshape(k, 2, -1).mean(2)
    if look.batch_look:
        batch = torch.stack([xs.sum(1) - 1, torch.logsumexp(xs, 1)], 1).abs().mean(2)
    else:
        batch = xs.new_full((k, 2), math.nan)
    flat = xs.reshape(k, -1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    prior = _class_prior(look, ts, updates, running, xs)
    return torch.cat([lo, hi, devs, prior[:, :1], batch, prior[:, 1:]], 1)


def _class_prior(
    look: _Look, ts: torch.Tensor, updates: list[bool], running: dict[str, Any], xs: torch.Tensor
) -> torch.Tensor:
    """[k, 3]: the entropy of the class prior of every target seen up to each step (the
    loss of predicting the prior), NaN where the loss has none; and on the steps whose
    targets are counted, the entropy of each batch's own class mix and its targets."""
    k = ts.shape[0]
    if not look.prior or not running.get("primed"):
        return xs.new_full((k, 3), math.nan)
    if not any(updates):
        return torch.cat([running["baseline"].expand(k, 1), xs.new_full((k, 2), math.nan)], 1)
    classes = look.classes
    if not ts.is_floating_point():
        # class indices: counted without boolean indexing (no host sync)
        valid = (ts != look.ignore_index).reshape(k, -1).float()
        idx = ts.reshape(k, -1).clamp(0, classes - 1)
        if idx.dtype != torch.int64:
            idx = idx.long()
        mass = xs.new_zeros(k, classes).scatter_add_(1, idx, valid)
    else:
        mass = ts.float().movedim(look.cdim + 1, -1).reshape(k, -1, classes).sum(1)
    if not all(updates):
        keep = torch.tensor(updates, device=mass.device)[:, None]
        mass = torch.where(keep, mass, 0.0)
    # each batch's own mix: a loader over data sorted by class gives batches of one class
    targets = mass.sum(1, keepdim=True)
    own = torch.special.entr(mass / targets.clamp_min(1e-12)).sum(1, keepdim=True)
    counted = targets > 0
    mix = torch.cat(
        [torch.where(counted, own, math.nan), torch.where(counted, targets, math.nan)], 1
    )
    total = mass.cumsum(0)
    before = running.get("mass")
    if before is not None and before.shape == total.shape[1:]:
        total = total + before
    running["mass"] = total[-1]
    q = total / total.sum(1, keepdim=True).clamp_min(1e-12)
    if look.smoothing:
        q = (1 - look.smoothing) * q + look.smoothing / classes
    baseline = torch.special.entr(q).sum(1, keepdim=True)
    running["baseline"] = baseline[-1:]
    return torch.cat([baseline, mix], 1)


def _binary_block(
    look: _Look, xs: torch.Tensor, ts: torch.Tensor, updates: list[bool], running: dict[str, Any]
) -> torch.Tensor:
    """[k, 9]: min, max, NaN, NaN, baseline (the binary entropy of the mean target), NaN x 4."""
    k = xs.shape[0]
    nan = xs.new_full((k, 1), math.nan)
    baseline = nan
    if look.prior:
        n = ts.shape[1]
        if running.get("shape") != ts.shape[2:]:
            running.update(shape=ts.shape[2:], n=0, sum=0.0)
        total = running["sum"] + ts.sum(1).cumsum(0)
        seen = running["n"] + n * torch.arange(1, k + 1, device=ts.device, dtype=ts.dtype)
        running["n"] += n * k
        running["sum"] = total[-1]
        p = (total / seen.view(k, *[1] * (total.dim() - 1))).clamp(1e-7, 1 - 1e-7)
        entropy = -(p * p.log() + (1 - p) * (1 - p).log())
        baseline = entropy.reshape(k, -1).mean(1, keepdim=True)
    return torch.cat(
        [xs.amin(1, keepdim=True), xs.amax(1, keepdim=True), nan, nan, baseline, *[nan] * 4], 1
    )


def _regression_block(
    look: _Look, xs: torch.Tensor, ts: torch.Tensor, updates: list[bool], running: dict[str, Any]
) -> torch.Tensor:
    """[k, 6] without a baseline, else [k, 8]: min, max, the targets beyond them (`_beyond`),
    then the variance of every target seen up to each step, and the mean over targets of
    their squared mean."""
    k = xs.shape[0]
    flat = xs.reshape(k, -1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    range_ = torch.cat([lo, hi, _beyond(ts.reshape(k, -1), lo, hi)], 1)
    if not look.prior:
        return range_
    if look.reset:
        running.update(n=0, mean=None, m2=None)
    upd = [i for i, u in enumerate(updates) if u]
    if not upd:
        kept = running["kept"].expand(k, 2)
        return torch.cat([range_, kept], 1)
    tu = ts if len(upd) == k else ts[upd]
    u, n = tu.shape[0], tu.shape[1]
    # each step's variance and mean per target, pooled with the earlier steps' (Chan et
    # al.), all u prefixes at once: exact at any offset of the targets, centred on the
    # mean before these steps so the sums hold only what moved since
    var, mean = torch.var_mean(tu, dim=1, correction=0)
    previous = running.get("kept")
    centre = running["mean"] if running["mean"] is not None else mean[0]
    a = mean - centre
    before = running["n"]
    counts = before + n * torch.arange(1, u + 1, device=tu.device, dtype=tu.dtype)
    counts = counts.view(u, *[1] * (a.dim() - 1))
    shift = (n * a.cumsum(0)) / counts  # the pooled mean's offset from the centre
    between = (n * (a * a).cumsum(0) - counts * shift * shift).clamp_min(0)
    m2 = n * var.cumsum(0) + between
    if running["m2"] is not None:
        m2 = m2 + running["m2"]
    pooled = centre + shift
    # predicting the mean target for every sample scores the target variance under MSE;
    # with it, the targets' scale: mean square = variance + squared mean
    kept = torch.stack(
        [(m2 / counts).reshape(u, -1).mean(1), pooled.square().reshape(u, -1).mean(1)], 1
    )
    running.update(n=before + n * u, mean=pooled[-1], m2=m2[-1], kept=kept[-1:])
    if len(upd) != k:
        # a step that did not update keeps the statistics of the last one that did
        last, at = [], -1
        for did in updates:
            at += did
            last.append(at)
        if last[0] < 0:  # steps before this block's first update: those from before it
            kept = torch.cat([previous, kept])
            last = [i + 1 for i in last]
        kept = kept[torch.tensor(last, device=kept.device)]
    return torch.cat([range_, kept], 1)


def _beyond(ts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """[k, 4]: the share of each step's targets below its lowest prediction and their
    mean square distance to it (over all targets), the same above its highest. A model
    whose output cannot cross a bound (0 after a final ReLU) keeps that loss however long
    it trains."""
    below = (lo - ts).clamp_min(0)
    above = (ts - hi).clamp_min(0)
    return torch.stack(
        [
            (below > 0).float().mean(1),
            below.square().mean(1),
            (above > 0).float().mean(1),
            above.square().mean(1),
        ],
        1,
    )
