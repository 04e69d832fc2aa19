"""What the loss is fed: evidence for a loss that does not move.

`LossInputProbe` looks at the input and target of `CrossEntropyLoss`, `NLLLoss`,
`BCEWithLogitsLoss`, `KLDivLoss` and `MSELoss` on sampled steps: whether the input rows are already
probabilities or log-probabilities (rows summing to 1, or whose exp sums to 1), and the loss
of the best constant prediction for the targets seen so far (class-prior entropy, target
variance).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ._base import Probe
from ._loss import loss_name
from ._state import WatchState
from ._tensors import detached, has_values

#: losses whose input and target reveal a bug of the input pipeline or the head
#: (KLDivLoss: whether its input is log-probabilities, as it expects; it has no prior)
CLASSIFICATION_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss, nn.BCEWithLogitsLoss, nn.KLDivLoss)
REGRESSION_LOSSES = (nn.MSELoss,)
#: the targets' running statistics (class prior, mean and variance) settle within a few
#: batches: they take in every sampled step's targets this many times, then those of
#: one sampled step in `PRIOR_EVERY` (the baseline in between is the last one computed)
PRIOR_WARMUP = 16
PRIOR_EVERY = 8
#: rows of a classification loss's input whose statistics are taken (a large-vocabulary
#: LM's logits are [batch * seq, vocab]: a slice tells probabilities from logits as well)
MAX_ROWS = 1024
#: sampled steps of each loss whose input is also checked for normalisation over the batch
#: axis (a softmax over dim=0 in the loss code is there from the first step on)
BATCH_LOOKS = 16


class LossInputProbe(Probe):
    name = "loss_inputs"
    writes = ("loss_inputs",)

    def __init__(self, state: WatchState):
        super().__init__(state)
        self._seen: dict[tuple[int, str], int] = {}  # (loss id, split) -> last step recorded
        # (loss id, split) -> running target statistics over the sampled steps, on device:
        # the prior of one batch underestimates the entropy of many classes
        self._running: dict[tuple[int, str], dict[str, Any]] = {}
        self._regression_rows = _RegressionRows(state.tables["loss_inputs"])
        self._classification_rows = _ClassificationRows(state.tables["loss_inputs"])

    def install(self) -> None:
        self.state.forwards.loss(self, self._on_forward, sampled=True)

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self.state.sampled:
            return
        if not isinstance(module, CLASSIFICATION_LOSSES + REGRESSION_LOSSES) or len(args) < 2:
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
        key = (id(module), split)
        if self._seen.get(key) == state.step:
            return  # one look per loss and step: a per-token loop stays cheap
        self._seen[key] = state.step
        running = self._running.setdefault(key, {})
        # detached tensors record no graph: no `no_grad()` context (~9 Python calls)
        if isinstance(module, CLASSIFICATION_LOSSES):
            classes, stats = _classification_stats(module, detached(x), detached(t), running)
            sink = self._classification_rows
        else:
            classes = 0
            stats = _regression_stats(module, detached(x), detached(t), running)
            sink = self._regression_rows
        if stats is None:
            return
        state.deferred.add_row(
            sink,
            (state.step, split, loss_name(state, module), type(module).__name__, classes),
            stats,
        )


class _RegressionRows:
    """Deferred sink: a regression loss has no row deviations (and, reduced otherwise than
    by "mean", no baseline): their NaN are put in on the host, not made on the device.
    Its values: min, max, then (mean reduction) the target variance and the mean over
    targets of their squared mean, whose sum is the targets' mean square."""

    def __init__(self, table: Any):
        self.table = table

    def append(self, *row: Any) -> None:
        prefix, v = row[:5], row[5:]
        baseline = v[2] if len(v) > 2 else math.nan
        square = v[2] + v[3] if len(v) > 3 else math.nan
        rms = math.sqrt(square) if square >= 0 else math.nan  # NaN targets: NaN, not 0
        nan = math.nan
        self.table.append(*prefix, v[0], v[1], nan, nan, baseline, rms, nan, nan)


class _ClassificationRows:
    """Deferred sink: a classification loss has no target scale (NaN, on the host), put
    in before its two batch-axis deviations, the last of its values."""

    def __init__(self, table: Any):
        self.table = table

    def append(self, *row: Any) -> None:
        self.table.append(*row[:-2], math.nan, *row[-2:])

    def extend(self, rows: list[tuple[Any, ...]]) -> None:
        self.table.extend([(*row[:-2], math.nan, *row[-2:]) for row in rows])


def _update_prior(running: dict[str, Any]) -> bool:
    """Whether this sampled step adds its targets to the running statistics."""
    seen = running.get("updates", 0)
    running["updates"] = seen + 1
    return seen < PRIOR_WARMUP or seen % PRIOR_EVERY == 0


def _classification_stats(
    module: nn.Module, x: torch.Tensor, t: torch.Tensor, running: dict[str, Any]
) -> tuple[int, torch.Tensor | None]:
    if isinstance(module, nn.BCEWithLogitsLoss):
        # it applies the sigmoid itself: inputs all in [0, 1] are sigmoid outputs; the best
        # constant prediction (the mean target) scores its binary entropy
        xf = x.reshape(-1)[: MAX_ROWS * 64].float()
        nan = torch.full((), math.nan, device=x.device)
        baseline = nan
        plain = module.reduction == "mean" and module.weight is None and module.pos_weight is None
        if plain and t.shape == x.shape and t.is_floating_point() and t.dim() >= 1:
            tf = t.float()
            if running.get("shape") != tf.shape[1:]:
                running.update(shape=tf.shape[1:], n=0, sum=0.0)
            running["n"] += tf.shape[0]
            running["sum"] = running["sum"] + tf.sum(0)
            p = (running["sum"] / running["n"]).clamp(1e-7, 1 - 1e-7)
            baseline = -(p * p.log() + (1 - p) * (1 - p).log()).mean()
        return 2, torch.stack([xf.min(), xf.max(), nan, nan, baseline, nan, nan])
    cdim = 1 if x.dim() >= 2 else 0
    classes = x.shape[cdim]
    # the row statistics of a slice suffice; every target counts for the prior
    xf = (x[:MAX_ROWS] if x.dim() >= 2 else x).float()
    # few kernels: both row deviations in one stack, one |.| and one mean
    rows = torch.stack([xf.sum(cdim) - 1, torch.logsumexp(xf, cdim)])
    devs = rows.abs().reshape(2, -1).mean(1)
    looks = running.get("batch_looks", 0)
    if x.dim() == 2 and 1 < x.shape[0] <= MAX_ROWS and classes > 1 and looks < BATCH_LOOKS:
        # the same over the batch axis: columns that sum to 1 are a softmax over dim=0
        # (~20 us on a CPU: the loss's first sampled steps show it as well as all would)
        running["batch_looks"] = looks + 1
        cols = torch.stack([xf.sum(0) - 1, torch.logsumexp(xf, 0)])
        batch_devs = cols.abs().mean(1)
    else:
        batch_devs = torch.full((2,), math.nan, device=x.device)
    baseline = None
    reduction, weight = getattr(module, "reduction", "mean"), getattr(module, "weight", None)
    plain = reduction == "mean" and weight is None and not isinstance(module, nn.KLDivLoss)
    if plain and not _update_prior(running) and running.get("baseline") is not None:
        baseline = running["baseline"]  # the prior has settled: the last one computed
    if baseline is None and plain:
        mass = None
        if not t.is_floating_point():
            # class indices: count them without boolean indexing (no host sync). The
            # forward succeeded, so every target is a class or the ignore index
            ignore = getattr(module, "ignore_index", -100)
            valid = (t != ignore).reshape(-1).float()
            idx = t.reshape(-1).clamp(0, classes - 1)
            if idx.dtype != torch.int64:
                idx = idx.long()
            mass = torch.zeros(classes, device=x.device).scatter_add_(0, idx, valid)
        elif t.shape == x.shape:
            mass = t.float().movedim(cdim, -1).reshape(-1, classes).sum(0)
        if mass is not None:
            total = running.get("mass")
            total = mass if total is None or total.shape != mass.shape else total + mass
            running["mass"] = total
            q = total / total.sum().clamp_min(1e-12)
            eps = float(getattr(module, "label_smoothing", 0.0) or 0.0)
            if eps:
                q = (1 - eps) * q + eps / classes
            # the loss of the best constant prediction (predict the prior) is its entropy
            baseline = running["baseline"] = torch.special.entr(q).sum()[None]
    if baseline is None:
        baseline = torch.full((1,), math.nan, device=x.device)
    lo, hi = torch.aminmax(xf)
    stats = torch.cat([torch.stack([lo, hi]), devs, baseline.to(xf.device), batch_devs])
    return classes, stats


def _regression_stats(
    module: nn.Module, x: torch.Tensor, t: torch.Tensor, running: dict[str, Any]
) -> torch.Tensor | None:
    if t.shape != x.shape or t.dim() == 0 or t.shape[0] < 2 or not t.is_floating_point():
        return None
    xf, tf = x.float(), t.float()
    lo, hi = torch.aminmax(xf)
    if module.reduction != "mean":
        return torch.stack([lo, hi])  # no baseline: `_RegressionRows` fills in NaN
    if running.get("shape") != tf.shape[1:]:
        running.update(shape=tf.shape[1:], n=0, updates=0)
    elif not _update_prior(running):
        return torch.stack([lo, hi, running["baseline"], running["mean_square"]])
    # this batch's variance and mean per target, pooled with the earlier batches'
    # (Chan et al.): exact at any offset of the targets; 9 kernels with the targets' scale
    var, mean = torch.var_mean(tf, dim=0, correction=0)
    seen, new = running["n"], tf.shape[0]
    total = seen + new
    if seen == 0:
        pooled_mean, m2 = mean, var * new
    else:
        delta = mean - running["mean"]
        pooled_mean = running["mean"].add(delta, alpha=new / total)
        m2 = running["m2"].add(var, alpha=new).addcmul_(delta, delta, value=seen * new / total)
    running.update(n=total, mean=pooled_mean, m2=m2)
    # predicting the mean target for every sample scores the target variance under MSE
    baseline = running["baseline"] = m2.mean() / total
    # with it, the targets' scale: mean square = variance + squared mean
    running["mean_square"] = pooled_mean.square().mean()
    return torch.stack([lo, hi, baseline, running["mean_square"]])
