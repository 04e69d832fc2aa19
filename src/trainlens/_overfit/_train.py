"""The training run: a copy of the model trained on one batch under `trainlens.watch`."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.loss import _Loss

from .._errors import TrainlensError, UsageError
from .._format import num
from . import _criterion as crit
from ._progress import Progress
from ._setup import Setup, batch_size, call_model, clone_batch
from ._verdict import OverfitResult, RunFacts, VerdictPlugin

DEFAULT_LR = 1e-3


def overfit_one_batch(
    model: nn.Module,
    batch: tuple[Any, Any],
    loss_fn: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    steps: int | None = None,
    lr: float | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    quiet: bool = True,
    progress: Callable[[int, float], None] | None = None,
) -> OverfitResult:
    """Train on one batch until it is memorised, and say why not when it is not.

    The caller's model and optimizer are left unchanged: a deep copy of both is trained
    (the batch's tensors are not modified either). Runs under `trainlens.watch`, so the
    run directory holds the usual drill; before training the loss at initialisation is
    checked (near ln(classes) for classification) and the batch-dependency probe runs.

    Passed means memorised, a sane loss at initialisation (within 3x and 1 nat of ln(C),
    not negative) and no `error` finding. Memorised means:
      - classification (CrossEntropy/NLL/BCE losses): the final loss is below 0.05, or
        every sample of the batch is classified right (eval mode) and the loss fell
        below half its initial value;
      - anything else (regression): the final loss is below 2% of the loss of the best
        constant prediction (the target mean; for MSE that is the target variance), or
        below 2% of the initial loss for losses trainlens cannot evaluate that way.

    Without `optimizer`, Adam at `lr` (default 1e-3) is used; with one, `lr` (if given)
    overrides its learning rate. Training stops as soon as the batch is memorised. By
    default (`steps=None`) it first runs 200 steps and, while the loss is still falling
    clearly (its median over the last window at least 10% below the window before),
    doubles the budget, up to 3000 steps: a failure then says whether the loss stalled or
    was still improving. An explicit `steps` is a hard limit. `quiet=False` shows a live
    progress bar on stderr; `progress(step, loss)` is called after each step.
    """
    from .._watch import watch

    setup = Setup(model, batch, loss_fn, optimizer)
    setup.check("overfit_one_batch")
    adaptive = steps is None
    steps = crit.DEFAULT_STEPS if steps is None else _positive_int(steps, "steps")
    if lr is not None and (
        isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or math.isinf(lr)
    ):
        raise UsageError(f"lr must be a positive number, got {lr!r}")
    try:
        model_c, opt_c = copy.deepcopy((model, optimizer))
    except Exception as err:
        raise UsageError(
            f"overfit_one_batch trains a copy of the model, and copy.deepcopy failed on it "
            f"({type(err).__name__}: {err}); make the model deep-copyable"
        ) from err
    if opt_c is None:
        opt_c = torch.optim.Adam(model_c.parameters(), lr=lr if lr is not None else DEFAULT_LR)
        opt_desc = (
            f"Adam(lr={num(float(opt_c.param_groups[0]['lr']))}) (default: no optimizer was given)"
        )
    else:
        if lr is not None:
            for group in opt_c.param_groups:
                group["lr"] = lr
        opt_desc = (
            f"{type(opt_c).__name__}(lr={num(float(opt_c.param_groups[0].get('lr', math.nan)))})"
        )
    if not any(p.requires_grad for p in model_c.parameters()):
        raise UsageError("the model has no trainable parameters: nothing to overfit")

    inputs, targets = clone_batch(batch[0]), clone_batch(batch[1])
    kind = crit.loss_kind(loss_fn)
    baseline = crit.baseline(loss_fn, targets) if kind == "regression" else None
    captured = isinstance(loss_fn, _Loss)  # nn losses are recorded by watch itself
    losses: list[float] = []
    # what the verdict needs, handed to the run before it is written (drill["overfit"])
    run = RunFacts(kind, baseline, opt_desc, batch_size(targets), losses, adaptive)
    section = VerdictPlugin(run)
    error: BaseException | None = None
    accuracy: float | None = None
    lens = watch(model_c, opt_c, run_dir=run_dir, quiet=True, plugins=[section])
    section.lens = lens
    bar = Progress(steps) if not quiet else None
    try:
        with lens:
            lens.note("batch_size", batch_size(targets))  # the batch check's batch axis
            model_c.train()
            step = 0
            while step < steps:
                loss = loss_fn(call_model(model_c, inputs), targets)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise UsageError(
                        f"loss_fn must return a scalar tensor, got "
                        f"{type(loss).__name__}{list(getattr(loss, 'shape', []))}"
                    )
                if not captured:
                    lens.log_loss(loss)
                opt_c.zero_grad(set_to_none=True)
                loss.backward()
                opt_c.step()
                value = float(loss.detach())
                losses.append(value)
                if bar is not None:
                    bar.update(step + 1, value)
                if progress is not None:
                    progress(step + 1, value)
                step += 1
                if not math.isfinite(value):
                    break
                if crit.target_met(kind, value, losses[0], baseline):
                    break
                if crit.all_right(kind, step, losses, model_c, inputs, targets):
                    break
                if (
                    step == steps
                    and adaptive
                    and steps < crit.MAX_STEPS
                    and crit.trend(losses, crit.target(kind, losses, baseline)) == "improving"
                ):
                    steps = min(2 * steps, crit.MAX_STEPS)  # still learning: give it the time
                    if bar is not None:
                        bar.extend(steps)
            accuracy = crit.accuracy(model_c, inputs, targets, kind)
            run.accuracy = accuracy
            # the rules read the verdict so far: a batch that was not memorised is a
            # failure to explain even when the loss curve shows no symptom of its own
            memorised_so_far, _ = crit.memorised(kind, losses, accuracy, baseline)
            lens.note(
                "overfit",
                {
                    "memorised": memorised_so_far,
                    "kind": kind,
                    "steps": len(losses),
                    "max_steps": steps,
                    "baseline": baseline,
                    "trend": crit.trend(losses, crit.target(kind, losses, baseline)),
                },
            )
    except TrainlensError:
        raise
    except Exception as err:  # the model's own crash: the drill names it, we report it
        error = err
    finally:
        if bar is not None:
            bar.close()
    result = section.result
    if result is None:  # the run could not be written: the verdict all the same
        meta = lens.records.meta if lens.records is not None else {}
        result = section.verdict(lens.drill or {}, meta, error)
    result.findings, result.run_dir = list(lens.findings), lens.run_dir
    result.drill = lens.drill or {}
    return result


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return value
