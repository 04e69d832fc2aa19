"""When a batch counts as memorised: the loss kind, the targets, the trend, the accuracy."""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .._format import num
from .._probes._state import suspended
from ._setup import call_model

#: steps trained before the loss trend is first judged; while the loss still falls
#: clearly the budget doubles, up to MAX_STEPS (an ordinary MLP memorising 64 samples of
#: 10 classes at Adam's 1e-3 needs several hundred steps, a narrow one over a thousand)
DEFAULT_STEPS = 200
MAX_STEPS = 3000
#: "still falling clearly": the median loss of the last window is at least this much
#: below the median of the window before it, and at that pace the loss would reach the
#: memorised level within MAX_STEPS more steps
IMPROVING_DROP = 0.02
#: trend windows: a quarter of the steps so far, within these bounds
TREND_WINDOW = (10, 100)
#: how often (steps) a classification run checks whether every sample is right yet
ACCURACY_EVERY = 20

#: classification: memorised when the final loss is below this (nats)...
CLASSIFICATION_LOSS_TARGET = 0.05
#: ...or every sample is right and the loss fell below this fraction of its start
#: (label smoothing keeps a memorised batch's loss above zero)
CLASSIFICATION_DROP = 0.5
#: regression: memorised when the final loss is below this fraction of the loss of the
#: best constant prediction (the target mean: the target variance for MSE)
REGRESSION_FRACTION = 0.02

#: losses whose batch is memorised when every sample is classified right
_CLASSIFICATION_LOSSES: tuple[Any, ...] = (
    nn.CrossEntropyLoss,
    nn.NLLLoss,
    nn.BCEWithLogitsLoss,
    nn.BCELoss,
    F.cross_entropy,
    F.nll_loss,
    F.binary_cross_entropy_with_logits,
    F.binary_cross_entropy,
)


def trend_window(n: int) -> int:
    """The trend's window for `n` losses: a quarter of them, within TREND_WINDOW."""
    lo, hi = TREND_WINDOW
    return max(lo, min(hi, n // 4))


def trend(losses: list[float], target: float) -> str:
    """ "improving" while the loss still falls clearly towards `target` (the memorised
    level), else "stalled" (or "non_finite")."""
    if not losses or not math.isfinite(losses[-1]):
        return "non_finite"
    w = trend_window(len(losses))
    if len(losses) < 2 * w:
        return "improving"  # too early to call it stalled
    before = statistics.median(losses[-2 * w : -w])
    last = statistics.median(losses[-w:])
    drop = before - last
    if not drop > IMPROVING_DROP * abs(before):
        return "stalled"
    needed = (last - target) / (drop / w)  # steps to the memorised level at this pace
    return "improving" if needed <= MAX_STEPS else "stalled"


def target(kind: str, losses: list[float], baseline: float | None) -> float:
    """The loss at which the batch counts as memorised (what the trend heads for)."""
    if kind == "classification":
        return CLASSIFICATION_LOSS_TARGET
    reference = baseline if baseline is not None else (losses[0] if losses else 0.0)
    return REGRESSION_FRACTION * abs(reference)


def all_right(
    kind: str, step: int, losses: list[float], model: nn.Module, inputs: Any, targets: Any
) -> bool:
    """Classification: every sample right and the loss below half its start (checked every
    ACCURACY_EVERY steps once the loss got there): memorised, no need to reach 0.05."""
    if kind != "classification" or step % ACCURACY_EVERY:
        return False
    first, last = losses[0], losses[-1]
    if not (math.isfinite(last) and 0 <= last < CLASSIFICATION_DROP * first):
        return False
    return accuracy(model, inputs, targets, kind) == 1.0


def loss_kind(loss_fn: Any) -> str:
    for key in _CLASSIFICATION_LOSSES:
        if loss_fn is key or (isinstance(key, type) and isinstance(loss_fn, key)):
            return "classification"
    return "regression"


def baseline(loss_fn: Any, targets: Any) -> float | None:
    """The loss of the best constant guess (the target mean), when the loss can say it."""
    if not isinstance(targets, torch.Tensor) or not targets.is_floating_point():
        return None
    try:
        with torch.no_grad(), suspended():
            guess = torch.full_like(targets, float(targets.float().mean()))
            value = float(loss_fn(guess, targets))
    except Exception:
        return None
    return value if math.isfinite(value) and value > 0 else None


def target_met(kind: str, value: float, first: float, baseline: float | None) -> bool:
    """The loss alone says memorised (the step loop stops here)."""
    if kind == "classification":
        return 0 <= value < CLASSIFICATION_LOSS_TARGET
    reference = baseline if baseline is not None else first
    return abs(value) <= REGRESSION_FRACTION * abs(reference) or value == 0


def memorised(
    kind: str, losses: list[float], accuracy: float | None, baseline: float | None
) -> tuple[bool, str]:
    """Memorised or not, and the criterion in words."""
    if not losses:
        return False, "no training step completed"
    first, last = losses[0], losses[-1]
    if kind == "classification":
        text = (
            f"classification: final loss < {CLASSIFICATION_LOSS_TARGET}, or 100% batch "
            f"accuracy with the loss below {CLASSIFICATION_DROP:.0%} of its start"
        )
        ok = math.isfinite(last) and (
            0 <= last < CLASSIFICATION_LOSS_TARGET
            or (accuracy == 1.0 and 0 <= last < CLASSIFICATION_DROP * first)
        )
        return ok, text
    if baseline is not None:
        text = (
            f"regression: final loss <= {REGRESSION_FRACTION:.0%} of the loss of predicting "
            f"the target mean ({num(float(baseline))})"
        )
    else:
        text = f"final loss <= {REGRESSION_FRACTION:.0%} of the initial loss ({num(float(first))})"
    return math.isfinite(last) and target_met(kind, last, first, baseline), text


def accuracy(model: nn.Module, inputs: Any, targets: Any, kind: str) -> float | None:
    """Share of the batch classified right, in eval mode, unseen by the probes."""
    if kind != "classification" or not isinstance(targets, torch.Tensor):
        return None
    flags = [(m, m.training) for m in model.modules()]
    try:
        with torch.no_grad(), suspended(), torch.random.fork_rng(devices=[]):
            model.eval()
            out = call_model(model, inputs)
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                return None
            if targets.is_floating_point() and out.shape == targets.shape:
                if (
                    out.dim() >= 2
                    and targets.dim() >= 2
                    and targets.sum(1).allclose(torch.ones((), device=targets.device))
                ):
                    right = out.argmax(1) == targets.argmax(1)  # class probabilities
                else:
                    threshold = 0.0 if out.min() < 0 or out.max() > 1 else 0.5  # logits/probs
                    right = (out > threshold) == (targets > 0.5)
            elif not targets.is_floating_point() and out.dim() >= 1:
                cls_dim = 1 if out.dim() >= 2 else 0
                right = out.argmax(cls_dim) == targets
            else:
                return None
            return float(right.float().mean())
    except Exception:
        return None
    finally:
        for m, training in flags:
            m.training = training
