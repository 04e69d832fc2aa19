"""flat_loss: the training loss does not move, and why.

"Flat" compares the median training loss of the run's first and last windows: less than a
10% drop (and no rise past the diverging limit), or a second half that no longer falls and
ends at the loss of the best constant prediction. Medians over windows of a fifth of the
run keep one noisy batch from faking progress or its lack. Runs too short for a trend,
losses that reached ~0, crashed runs and non-finite losses are left alone (the latter two
belong to other rules).

Each cause is then decided by its own evidence from the records (parameter, gradient and
update norms, activation zero fractions, the loss's input and target statistics, stale
gradients, the input statistics), and its confidence reflects how specific that evidence
is: a definite mechanism (no `optimizer.step()`, parameters outside the optimizer, stale
gradients, probabilities fed to `CrossEntropyLoss`) ranks above its consequences (tiny
updates, vanishing or missing gradients), so the root cause is read first.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .._catalogue import Catalogue
from .._finding import Cause, Finding
from .._hookspecs import hookimpl
from .._records import Records
from . import _initial_loss, _loss_seen
from ._common import (
    attribute_path,
    constant_baseline,
    exception_info,
    input_outliers,
    leaf_activations,
    module_attrs,
    num,
    param_stats,
)
from ._common import names as _names
from ._variants import unregistered_layers
from .diverging import dynamics, scale_sensitive
from .overfitting import sorted_batches

SYMPTOM = "flat_loss"
#: the causes this rule decides (the catalogue test checks every recipe cause has a rule)
CAUSES = frozenset({
    "optimizer_rebuilt", "optimizer_not_stepping", "params_not_in_optimizer",
    "zero_grad_missing",
    "softmax_before_loss", "no_gradient_flow", "dead_relu", "vanishing_gradient",
    "lr_too_low", "lr_too_high", "unnormalized_input", "unnormalized_target",
    "label_mismatch", "bad_initial_loss", "unknown", "no_loss_recorded",
    "gradient_clipped", "bounded_output", "symmetric_init",
})  # fmt: skip

#: activations that output exact zeros for negative inputs
RELU_FAMILY = ("ReLU", "ReLU6", "Threshold", "Hardsigmoid")
#: the range of a layer's output (lowest, highest): a model whose last layer is one of these
#: cannot predict a value beyond it
BOUNDED_OUTPUTS = {
    "ReLU": (0.0, math.inf),
    "ReLU6": (0.0, 6.0),
    "Softplus": (0.0, math.inf),
    "Sigmoid": (0.0, 1.0),
    "Hardsigmoid": (0.0, 1.0),
    "Tanh": (-1.0, 1.0),
    "Hardtanh": (-1.0, 1.0),
    "Softsign": (-1.0, 1.0),
}
#: modules that normalise a model's output into (log-)probabilities
SOFTMAX_MODULES = ("Softmax", "LogSoftmax", "Softmax2d", "Softmin")
#: losses whose input is checked for normalised rows: those that normalise raw logits
#: themselves (softmax, log-softmax, sigmoid), and those that want log-probabilities
LOGIT_LOSSES = ("CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "KLDivLoss")
#: losses that expect log-probabilities: log-probabilities are right, probabilities not
LOGPROB_LOSSES = ("NLLLoss", "KLDivLoss")


@hookimpl
def trainlens_diagnose(records: Records, catalogue: Catalogue) -> list[Finding]:
    if SYMPTOM not in catalogue:
        return []
    initial = _initial_loss.finding(records, catalogue)
    found = [initial] if initial is not None else []
    cut = _graph_cut_crash(records, catalogue)
    if cut is not None:
        return [*found, cut]
    unseen = _loss_seen.finding(records, catalogue)  # no loss at all: say so, as a warning
    if unseen is not None:
        return [*found, unseen]
    flat = _flatness(records, catalogue)
    if flat is None:
        # a loss that fell and then stopped at the floor the output's range sets: it will
        # not move further, however long the run
        stalled = _stalled_at_bound(records, catalogue)
        return [*found, stalled] if stalled is not None else found
    ctx = _Context.build(records, catalogue, flat)
    checks = (
        _optimizer_not_stepping,
        _optimizer_rebuilt,
        _params_not_in_optimizer,
        _zero_grad_missing,
        _softmax_before_loss,
        _no_gradient_flow,
        _symmetric_init,
        _dead_relu,
        _vanishing_gradient,
        _gradient_clipped,
        _lr_too_low,
        _lr_too_high,
        _bounded_output,
        _unnormalized_target,
        _unnormalized_input,
        _label_mismatch,
    )
    causes = []
    for check in checks:
        cause = check(ctx)
        if cause is None:
            ctx.ruled_out.append(check.__name__.lstrip("_"))
        else:
            causes.append(cause)
    evidence = flat.evidence()
    if not causes:
        # flat, and nothing recorded explains it: say so, never guess a name; unless
        # another optimizer trains the other side of the loss (a GAN), where a level loss
        # is the equilibrium, not a symptom
        if _other_side_trained(ctx):
            return found
        unknown = _unknown(ctx)
        if unknown is None:
            return found
        evidence["ruled_out"] = list(ctx.ruled_out)
        return [*found, catalogue.finding(SYMPTOM, "warning", [unknown], evidence=evidence)]
    if any(c.id == "gradient_clipped" for c in causes):
        # the steps are small because the loop cut the gradients: the lr is not to blame
        causes = [
            dataclasses.replace(c, confidence=min(c.confidence, 0.3)) if c.id == "lr_too_low" else c
            for c in causes
        ]
    if any(c.id == "label_mismatch" for c in causes):
        evidence["ruled_out"] = list(ctx.ruled_out)
    top = catalogue.rank(causes)[0]
    severity = (
        "error" if flat.by_progress and top.confidence >= ctx.t("error_confidence") else "warning"
    )
    return [*found, catalogue.finding(SYMPTOM, severity, causes, evidence=evidence)]


# --- a backward pass with no graph to run through ------------------------------------------
#: what autograd raises when the loss has no graph (`loss.backward()` on a tensor that
#: does not require grad)
_NO_GRAPH = re.compile(r"does not require grad and does not have a grad_fn")


def _graph_cut_crash(records: Records, catalogue: Catalogue) -> Finding | None:
    """`loss.backward()` raised because the loss has no graph: the extreme of
    `no_gradient_flow`, where no parameter gets any gradient. Which way it was cut: the
    loss computed with gradients off (it was filed under "val"), every parameter frozen,
    or the loss rebuilt outside the graph."""
    exc = exception_info(records)
    if not exc or not _NO_GRAPH.search(str(exc.get("message", ""))):
        return None
    params = records.meta.get("params") or {}
    losses = records.losses
    step = exc.get("step")
    model = records.meta.get("model") or {}
    if params and not any(info.get("requires_grad", True) for info in params.values()):
        case = "frozen"
    elif model.get("last_forward_grad_enabled") is False:
        case, what = "no_grad", "forward"  # the model's output it came from had no graph
    elif len(losses) and str(losses["split"].iloc[-1]) == "val":
        case, what = "no_grad", "loss"  # the loss itself made with gradients off
    else:
        case = "rebuilt"

    def text(key: str) -> str:
        fields = {"step": step}
        if case == "no_grad":
            fields["what"] = catalogue.text(SYMPTOM, "no_gradient_flow", f"crash_no_grad_{what}")
        return catalogue.text(SYMPTOM, "no_gradient_flow", key, **fields)

    cause = catalogue.cause(
        SYMPTOM,
        "no_gradient_flow",
        confidence=0.9,
        evidence=text(f"crash_{case}_evidence"),
        step=step,
        onset=step,
    )
    cause = dataclasses.replace(
        cause, first_check=text(f"crash_{case}_check"), fix_attempt=text(f"crash_{case}_fix")
    )
    return catalogue.finding(
        SYMPTOM, "error", [cause], evidence={"exception": str(exc.get("message"))[:500]}
    )


# --- is the loss flat? -------------------------------------------------------------------
@dataclass(frozen=True)
class Flatness:
    n: int
    start: float
    end: float
    drop: float
    by_progress: bool
    baseline: float | None
    baseline_what: str | None
    by: str  # "step", or "backward pass" when no optimizer step ever ran
    #: the loss whose constant prediction `baseline` is (`MSELoss`: the mean target)
    baseline_kind: str | None = None

    def evidence(self) -> dict[str, Any]:
        """The curve in the finding's evidence."""
        return {
            "loss_start": self.start,
            "loss_end": self.end,
            "relative_drop": self.drop,
            "steps": self.n,
            "baseline": self.baseline,
            "curve_by": self.by,
        }


def _flatness(records: Records, catalogue: Catalogue) -> Flatness | None:
    t = lambda name: catalogue.threshold(SYMPTOM, name)  # noqa: E731
    exc = exception_info(records)
    if exc is not None and exc.get("type") != "KeyboardInterrupt":
        return None  # a crash is its own finding
    curve, by = _curve(records, int(t("min_steps")))
    if curve is None:
        return None
    values = curve.to_numpy(dtype=float)
    if not all(math.isfinite(v) for v in values):
        return None  # non-finite losses: the non_finite rule's job
    n = len(values)
    w = max(int(t("min_window")), int(n * float(t("window_share"))))
    start = float(pd.Series(values[:w]).median())
    if values[0] > 0 and start > float(t("start_jump")) * values[0]:
        # the first losses jumped far above the untrained model's (step 0, before any
        # update): a first step that threw the weights about; their median would read as
        # a loss that fell afterwards (one batch's loss is too noisy to use otherwise)
        start = float(values[0])
    end = float(pd.Series(values[-w:]).median())
    if abs(start) < 1e-12:
        return None
    if end <= float(t("near_zero")) or abs(end) <= float(t("near_zero_share")) * abs(start):
        return None  # solved: a plateau at ~0 is success
    if end > start * float(t("rise_limit")):
        return None  # rising: diverging, not flat
    drop = (start - end) / abs(start)
    baseline, what, kind = _baseline(records, catalogue)
    by_progress = drop < float(t("max_drop"))
    tol = catalogue.threshold(SYMPTOM, "baseline_tolerance", "label_mismatch")
    # at the constant-prediction level only counts once the loss has stopped there: the
    # second half of the run no longer falls (a run still descending may pass it later)
    mid = float(pd.Series(values[n // 2 : n // 2 + w]).median())
    stalled = (mid - end) / abs(mid) < float(t("plateau_max_drop"))
    at_baseline = (
        baseline is not None
        and abs(end - baseline) <= tol * baseline
        and stalled
        # a loss that fell to the constant-prediction level has to *sit* there for a trend's
        # worth of steps: language models pass the unigram level early in every healthy run
        and _steps_at(values, baseline, tol, w) >= int(t("plateau_min_steps"))
    )
    if not (by_progress or at_baseline):
        return None
    return Flatness(n, start, end, drop, by_progress, baseline, what, by, kind)


def _steps_at(values: Any, level: float, tol: float, window: int) -> int:
    """How many of the last steps the loss (rolling median) stayed within tol of level."""
    rolled = pd.Series(values).rolling(window, min_periods=1).median().to_numpy()
    inside = abs(rolled - level) <= tol * level
    outside = (~inside).nonzero()[0]
    return len(inside) if len(outside) == 0 else len(inside) - 1 - int(outside[-1])


def _curve(records: Records, min_steps: int) -> tuple[pd.Series | None, str]:
    curve = records.train_loss()
    if len(curve) >= min_steps:
        return curve, "steps"
    # optimizer watched but never stepped: every loss sits on step 0; read them in order
    meta = records.meta
    losses = records.losses
    train = losses[losses["split"] == "train"]["value"].reset_index(drop=True)
    if meta.get("optimizer_given") and meta.get("steps", 0) <= 1 and len(train) >= min_steps:
        return train, "backward passes"
    return None, "steps"


def _baseline(
    records: Records, catalogue: Catalogue
) -> tuple[float | None, str | None, str | None]:
    """The loss of the best constant prediction for the training targets, if known: its
    value, what it is (in words) and the loss it was computed for."""
    found = constant_baseline(records)
    if found is None:
        return None, None, None
    value, kind, classes_median = found
    if kind == "MSELoss":
        return value, catalogue.text(SYMPTOM, None, "baseline_mse"), kind
    if kind == "BCEWithLogitsLoss":
        return value, catalogue.text(SYMPTOM, None, "baseline_bce"), kind
    classes = int(classes_median)
    what = catalogue.text(
        SYMPTOM, None, "baseline_classes", classes=classes, ln=num(math.log(classes))
    )
    return value, what, kind


# --- what the records say, per parameter ------------------------------------------------
@dataclass
class _Context:
    records: Records
    catalogue: Catalogue
    flat: Flatness
    per_param: pd.DataFrame  # one row per tracked parameter, in model order
    sampled_steps: int
    lr: float
    order: dict[str, int]  # module -> forward call order (first seen)
    called: set[str]
    notes: dict[str, Any] = field(default_factory=dict)
    #: the checks that ran and found nothing, in order (a fallback lists them)
    ruled_out: list[str] = field(default_factory=list)

    def t(self, name: str, cause: str | None = None) -> Any:
        return self.catalogue.threshold(SYMPTOM, name, cause)

    def text(self, cause: str | None, key: str, **fields: Any) -> str:
        """One of the recipe's texts (`cause` None: the symptom's own), filled in."""
        return self.catalogue.text(SYMPTOM, cause, key, **fields)

    def describe(self) -> str:
        """The flat curve in numbers: the evidence every cause of the finding starts from."""
        flat = self.flat
        return self.text(
            None, "curve", start=num(flat.start), end=num(flat.end), n=flat.n, by=flat.by
        )

    @classmethod
    def build(cls, records: Records, catalogue: Catalogue, flat: Flatness) -> _Context:
        p = records.params
        agg = param_stats(records)
        steps = records.steps
        lr = float(steps["lr"].median()) if not steps.empty else math.nan
        shapes = records.shapes
        calls = shapes[shapes["call"].notna()].sort_values(["step", "call"])
        module_order: dict[str, int] = {}
        for m in calls["module"]:
            module_order.setdefault(m, len(module_order))
        return cls(
            records=records,
            catalogue=catalogue,
            flat=flat,
            per_param=agg,
            sampled_steps=int(p["step"].nunique()) if not p.empty else 0,
            lr=lr,
            order=module_order,
            called=set(shapes["module"]),
        )

    @classmethod
    def unflat(cls, records: Records, catalogue: Catalogue) -> _Context:
        """The same view of a run whose curve is not flat (its checks that need no flat
        curve: direct evidence, a stall at the output's bound)."""
        loss = records.train_loss()
        values = loss.to_numpy(dtype=float) if len(loss) else np.array([math.nan])
        start, end = float(values[0]), float(values[-1])
        baseline, what, kind = _baseline(records, catalogue)
        flat = Flatness(
            n=len(values),
            start=start,
            end=end,
            drop=(start - end) / abs(start) if start else 0.0,
            by_progress=False,
            baseline=baseline,
            baseline_what=what,
            by="steps",
            baseline_kind=kind,
        )
        return cls.build(records, catalogue, flat)

    def cause(
        self, cause_id: str, confidence: float, evidence: str | None = None, **fields: Any
    ) -> Cause:
        """A cause of this symptom; its evidence shows from the first sampled step unless
        the check says when (`onset=`): medians over the run are there from the start."""
        fields.setdefault("onset", self.first_step)
        return self.catalogue.cause(
            SYMPTOM, cause_id, confidence=confidence, evidence=evidence, **fields
        )

    @property
    def first_step(self) -> int | None:
        p = self.records.params
        return int(p["step"].min()) if not p.empty else None

    @property
    def optimizer_class(self) -> str:
        opt = self.records.meta.get("optimizer") or {}
        return opt["class"] if "class" in opt else self.text(None, "the_optimizer")

    def at_lr(self) -> str:
        """The lr the run used and its optimizer, for an evidence sentence."""
        if not math.isfinite(self.lr):
            return self.text(None, "at_unknown_lr")
        return self.text(None, "at_lr", lr=num(self.lr), optimizer=self.optimizer_class)

    @property
    def baseline_what(self) -> str:
        return self.flat.baseline_what or self.text(None, "constant_prediction")

    def forward_pos(self, module: str) -> int:
        """Where a module first ran in the forward; never-called ones after, in model order."""
        if module in self.order:
            return self.order[module]
        names = list(self.modules)
        return len(self.order) + (names.index(module) if module in names else len(names))

    @property
    def modules(self) -> dict[str, Any]:
        return self.records.meta.get("modules", {})


def _common_module(modules: list[str]) -> str | None:
    """The deepest module holding all of them; None when only the whole model does."""
    if not modules:
        return None
    parts = [m.split(".") if m else [] for m in modules]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common) or None


# --- the causes ---------------------------------------------------------------------------
def _optimizer_rebuilt(ctx: _Context) -> Cause | None:
    """New optimizers over the watched optimizer's own parameters, each stepping once or
    so (`loop_order.other_optimizers`: `instances` of one kind): the optimizer is built
    inside the loop, and its state (Adam's moments, momentum) starts from zero every step."""
    meta = ctx.records.meta
    watched_steps = int(meta.get("steps") or 0)
    for other in (meta.get("loop_order") or {}).get("other_optimizers") or ():
        shared = int(other.get("params", 0)) - int(other.get("params_outside", 0))
        instances, steps = int(other.get("instances", 0)), int(other.get("steps", 0))
        if shared <= 0 or instances < ctx.t("min_instances", "optimizer_rebuilt"):
            continue
        if instances < ctx.t("instance_share", "optimizer_rebuilt") * steps:
            continue  # one optimizer stepping many times: a second one on purpose
        name = str(other.get("optimizer"))
        memory = _OPTIMIZER_STATE.get(name, "state")
        return ctx.cause(
            "optimizer_rebuilt",
            0.95,
            onset=other.get("first_step"),
            optimizer=name,
            instances=instances,
            steps=steps,
            shared=shared,
            watched_steps=watched_steps,
            state=ctx.text("optimizer_rebuilt", memory),
        )
    return None


#: what an optimizer of each class keeps between steps (a recipe text key)
_OPTIMIZER_STATE = {
    "Adam": "moments", "AdamW": "moments", "NAdam": "moments", "RAdam": "moments",
    "Adamax": "moments", "SGD": "momentum", "RMSprop": "square_average",
    "Adagrad": "square_average", "Adadelta": "square_average",
}  # fmt: skip


def _optimizer_not_stepping(ctx: _Context) -> Cause | None:
    meta = ctx.records.meta
    if meta.get("optimizer_given") and meta.get("steps", 0) == 0:
        fields = dict(
            backward=int(meta.get("backward_passes", 0)),
            optimizer=ctx.optimizer_class,
            curve=ctx.describe(),
        )
        return ctx.cause(
            "optimizer_not_stepping",
            0.97,
            ctx.text("optimizer_not_stepping", "never_stepped", **fields),
            detail=ctx.text("optimizer_not_stepping", "never_stepped_detail", **fields),
        )
    pp = ctx.per_param
    if pp.empty:
        return None
    min_rel = ctx.t("min_grad_ratio", "optimizer_not_stepping")
    with_grad = pp[pp["in_optimizer"] & (pp["grad_pos"] >= 0.5) & (pp["rel_grad"] >= min_rel)]
    with_grad = with_grad[with_grad["update_rows"] >= 3]
    if with_grad.empty:
        return None
    still = with_grad[with_grad["changed"] == 0]
    share = still["numel"].sum() / with_grad["numel"].sum()
    if still.empty or share < ctx.t("share", "optimizer_not_stepping"):
        return None
    module = _common_module(list(still["module"]))
    fields = dict(
        still=len(still),
        with_grad=len(with_grad),
        grad=num(float(still["grad"].median())),
        sampled=ctx.sampled_steps,
        lr_note=ctx.text(None, "lr_note", lr=num(ctx.lr)) if math.isfinite(ctx.lr) else "",
        curve=ctx.describe(),
        params_of=module or ctx.text(None, "the_model"),
    )
    return ctx.cause(
        "optimizer_not_stepping",
        0.95,
        ctx.text("optimizer_not_stepping", "never_moved", **fields),
        module=module,
        detail=ctx.text("optimizer_not_stepping", "never_moved_detail", **fields),
    )


def _params_not_in_optimizer(ctx: _Context) -> Cause | None:
    unregistered = _unregistered(ctx)
    if unregistered is not None:
        return unregistered
    pp = ctx.per_param
    if pp.empty or not ctx.records.meta.get("optimizer_given"):
        return None
    # parameters that move all the same are trained by something else (a GAN's second
    # optimizer, a hand-written update): left out of this optimizer on purpose
    outside = pp[~pp["in_optimizer"] & (pp["grad_pos"] >= 0.5) & ~pp["drifted"]]
    if outside.empty:
        return None
    share = outside["numel"].sum() / pp["numel"].sum()
    names = list(outside.index)
    return ctx.cause(
        "params_not_in_optimizer",
        0.96 if share >= 0.5 else 0.8,
        module=_common_module(list(outside["module"])),
        names=_names(names),
        count=len(names),
        trainable=len(pp),
        share=f"{share:.0%}",
        grad=num(float(outside["grad"].median())),
        optimizer=ctx.optimizer_class,
    )


def _symmetric_init(ctx: _Context) -> Cause | None:
    """Weights whose rows (one per unit) are all the same at the end of the run
    (`meta["identical_rows"]`): a constant initialisation; every unit computes the same
    thing and gets the same gradient, so the layer trains as a single unit."""
    same = ctx.records.meta.get("identical_rows") or {}
    if not same:
        return None
    params = list(same)
    first = params[0]
    return ctx.cause(
        "symmetric_init",
        0.9,
        module=_common_module([first.rpartition(".")[0]]),
        names=_names(params),
        units=same[first],
        first=first,
        param=attribute_path(first),
    )


def _unregistered(ctx: _Context) -> Cause | None:
    """Layers the forward runs without owning them (kept in a plain list, made in
    `forward()`): their weights are in no per-parameter row, and no optimizer has them."""
    return unregistered_layers(ctx.records, ctx.catalogue)


def _zero_grad_missing(ctx: _Context) -> Cause | None:
    gc = ctx.records.grad_carry
    gc = gc[gc["step"] >= 1]
    if len(gc) < 3:
        return None
    ratio = ctx.t("carry_ratio", "zero_grad_missing")
    stale = gc[(gc["carried_frac"] >= 0.5) & (gc["carried_norm"] >= ratio * gc["step_norm"])]
    if len(stale) < ctx.t("steps_share", "zero_grad_missing") * len(gc):
        return None
    bps = ctx.records.steps["backward_passes"]
    per_step = (
        ctx.text("zero_grad_missing", "per_step", passes=num(float(bps.median())))
        if len(bps)
        else ""
    )
    growth = ""
    p = ctx.records.params
    if not p.empty:
        total = p.groupby("step")["grad_norm"].apply(lambda g: math.sqrt((g**2).sum()))
        growth = ctx.text(
            "zero_grad_missing",
            "growth",
            norm_start=num(float(total.iloc[0])),
            norm_end=num(float(total.iloc[-1])),
            step_start=int(total.index[0]),
            step_end=int(total.index[-1]),
        )
    return ctx.cause(
        "zero_grad_missing",
        0.93,
        onset=int(stale["step"].min()),
        stale=len(stale),
        sampled=len(gc),
        carried=num(float(stale["carried_norm"].median())),
        at_step=num(float(stale["step_norm"].median())),
        per_step=per_step,
        growth=growth,
    )


@dataclass(frozen=True)
class NormalisedInput:
    """A logits loss fed normalised outputs: which kind (`case`) and on which rows."""

    # "sigmoid" (outputs in [0, 1] into BCEWithLogitsLoss), "squashed" (every value in
    # [0, 1] into a softmax loss, rows not summing to 1: a sigmoid before it),
    # "probabilities" or "log_probabilities"
    case: str
    loss: str
    inputs: pd.DataFrame  # the loss's sampled train inputs
    rows: pd.DataFrame  # those normalised
    deviation: float  # how far from exactly normalised (NaN for the sigmoid case)
    floor: float  # the lowest loss such inputs allow


def normalised_input(ctx: _Context) -> NormalisedInput | None:
    """The evidence of `softmax_before_loss`, in numbers (also read by direct_evidence):
    each loss on its own (a distillation or multi-task loop adds several), the one with the
    most sampled steps first."""
    li = ctx.records.loss_inputs
    li = li[(li["split"] == "train") & li["type"].isin(LOGIT_LOSSES)]
    if li.empty:
        return None
    by_loss = sorted(li.groupby("loss", sort=False), key=lambda kv: -len(kv[1]))
    for _, rows in by_loss:
        found = _normalised_rows(ctx, rows)
        if found is not None:
            return found
    return None


def _normalised_rows(ctx: _Context, li: pd.DataFrame) -> NormalisedInput | None:
    """One loss's sampled inputs: normalised on enough of them, and how."""
    tol = ctx.t("row_tolerance", "softmax_before_loss")
    binary = li["type"] == "BCEWithLogitsLoss"
    # rows summing to 1, or (a sigmoid loss) every value inside [0, 1]
    probs = (li["min"] >= -1e-6) & ((li["prob_dev"] <= tol) | (binary & (li["max"] <= 1 + 1e-6)))
    logprobs = (li["max"] <= 1e-6) & (li["logprob_dev"] <= tol) & ~li["type"].isin(LOGPROB_LOSSES)
    # every value in [0, 1], rows not summing to 1: a sigmoid's outputs into a softmax loss
    squashed = (li["min"] >= -1e-6) & (li["max"] <= 1 + 1e-6) & ~binary & (li["classes"] > 1)
    need = ctx.t("steps_share", "softmax_before_loss") * len(li)
    loss = str(li["type"].mode().iloc[0])
    classes = int(li["classes"].median())
    # which normalised outputs the loss got: the recipe's `<case>_kind` / `<case>_deviation`
    if probs.sum() >= need and loss == "BCEWithLogitsLoss":
        rows, case, deviation = li[probs], "sigmoid", math.nan
        floor = math.log1p(math.exp(-1.0))  # -log(sigmoid(1)): a "certain" 1 scores no less
    elif probs.sum() >= need:
        rows, case = li[probs], "probabilities"
        deviation = float(rows["prob_dev"].median())
        floor = -math.log(math.e / (math.e + classes - 1)) if classes > 1 else 0.0
    elif logprobs.sum() >= need:
        rows, case = li[logprobs], "log_probabilities"
        deviation = float(rows["logprob_dev"].median())
        floor = 0.0
    elif squashed.sum() >= need and loss not in LOGPROB_LOSSES and _squashed_after_last(ctx):
        # logits confined to [0, 1]: the softmax of such a row gives at most e / (e + C - 1)
        rows, case, deviation = li[squashed], "squashed", math.nan
        floor = -math.log(math.e / (math.e + classes - 1)) if classes > 1 else 0.0
    else:
        return None
    return NormalisedInput(case, loss, li, rows, deviation, floor)


#: modules whose outputs lie in [0, 1]
SQUASH_MODULES = ("Sigmoid", "Hardsigmoid")


def _squashed_after_last(ctx: _Context) -> bool:
    """Whether something squashed the model's outputs into [0, 1]: a sigmoid module, or a
    last leaf layer whose own outputs reach beyond 1 (a functional `torch.sigmoid` after
    it). Logits that lie in [0, 1] straight out of the last layer (its input all zeros,
    only its bias left) are no squashing: the flow is cut before it."""
    if any(m.get("type") in SQUASH_MODULES for m in ctx.modules.values()):
        return True
    last = _last_leaf(ctx)
    if last is None:
        return True  # nothing to tell by: as before
    act = leaf_activations(ctx.records)
    rows = act[act["module"] == last]
    if rows.empty:
        return True
    return float(pd.to_numeric(rows["max_abs"], errors="coerce").median()) > 1 + 1e-6


def _softmax_before_loss(ctx: _Context) -> Cause | None:
    found = normalised_input(ctx)
    if found is None:
        return None
    loss, rows, case = found.loss, found.rows, found.case
    text = functools.partial(ctx.text, "softmax_before_loss")
    sigmoid = loss == "BCEWithLogitsLoss"
    # the recipe's `<squash>_...` texts: what squashed the outputs, and what the loss applies
    squash = "sigmoid" if sigmoid or case == "squashed" else "softmax"
    applies = text("sigmoid_applies" if sigmoid else "softmax_applies")
    kinds = ("Sigmoid",) if squash == "sigmoid" else SOFTMAX_MODULES
    softmaxes = [n for n, m in ctx.modules.items() if m.get("type") in kinds]
    module = max(softmaxes, key=ctx.forward_pos) if softmaxes else None
    module_type = ctx.modules[module]["type"] if module else text(f"{squash}_module_type")
    where = " " + text("from_module", module=module, module_type=module_type) if module else ""
    if loss in LOGPROB_LOSSES:  # probabilities where log-probabilities belong
        shown = f"`{module}` ({module_type})" if module else text("softmax_in_forward")
        fields = dict(
            loss=loss,
            rows=len(rows),
            sampled=len(found.inputs),
            where=where,
            shown=shown,
            low=num(float(rows["min"].min())),
            high=num(float(rows["max"].max())),
            deviation=text("probabilities_deviation", deviation=num(found.deviation)),
        )
        cause = ctx.cause(
            "softmax_before_loss",
            0.92,
            module=module,
            evidence=text("logprob_evidence", **fields),
            loss=loss,
            kind="",
            printout="",
            applies="",
            module_type=module_type,
            floor="",
        )
        return dataclasses.replace(
            cause,
            first_check=text("logprob_check", **fields),
            fix_attempt=text("logprob_fix", **fields),
        )
    return ctx.cause(
        "softmax_before_loss",
        0.92,
        module=module,
        loss=loss,
        kind=text(f"{case}_kind"),
        module_type=module_type,
        floor=num(found.floor),
        printout=text(f"{squash}_printout"),
        applies=applies,
        rows=len(rows),
        sampled=len(found.inputs),
        where=where,
        low=num(float(rows["min"].min())),
        high=num(float(rows["max"].max())),
        deviation=text(f"{case}_deviation", deviation=num(found.deviation)),
    )


def _no_gradient_flow(ctx: _Context) -> Cause | None:
    """A cut graph (None or zero gradients) or a sizeable frozen part: the stronger."""
    order = ctx.records.meta.get("loop_order") or {}
    if (order.get("cleared_before_step") or 0) >= 0.5 * (ctx.records.meta.get("steps") or 1):
        return None  # computed, then cleared before the step: not a cut graph (direct_evidence)
    found = [c for c in (_gradient_cut(ctx), _frozen_part(ctx)) if c is not None]
    return max(found, key=lambda c: c.confidence, default=None)


def _frozen_part(ctx: _Context) -> Cause | None:
    """A sizeable part of the model has requires_grad=False while the loss is flat.

    Whether its weights still look like the default initialisation of their layer type
    decides the confidence: a fresh init frozen was probably never meant to be frozen; a
    pretrained-looking part is often a deliberate freeze (and a head on it that trains
    well never gets here: its loss is not flat).
    """
    meta_params = ctx.records.meta.get("params", {})
    total = sum(int(m.get("numel", 0)) for m in meta_params.values())
    frozen = {
        n: m
        for n, m in meta_params.items()
        if m.get("requires_grad") is False and int(m.get("numel", 0)) > 0
    }
    if not frozen or total <= 0:
        return None
    share = sum(int(m["numel"]) for m in frozen.values()) / total
    if share < ctx.t("frozen_share", "no_gradient_flow"):
        return None
    roots = _frozen_roots(meta_params, set(frozen))
    size = {r: sum(int(frozen[n]["numel"]) for n in frozen if _under(n, r)) for r in roots}
    module = max(roots, key=lambda r: size[r])
    mtype = ctx.modules.get(module, {}).get("type", "?")
    looks = [
        v
        for n in frozen
        if _under(n, module)
        and (v := _fresh_init(ctx, n, frozen[n], ctx.t("fresh_rms_tolerance", "no_gradient_flow")))
        is not None
    ]
    fresh_numel = sum(numel for numel, fresh, _ in looks if fresh)
    known_numel = sum(numel for numel, _, _ in looks)
    fields = dict(
        module_type=mtype,
        numel=f"{size[module]:,}",
        share=f"{size[module] / total:.0%}",
        others=(
            ctx.text("no_gradient_flow", "frozen_others", others=len(roots) - 1)
            if len(roots) > 1
            else ""
        ),
        init=looks[0][2]["init"] if looks else "",
        rms=num(looks[0][2]["rms"]) if looks else "",
        expected_rms=num(looks[0][2]["expected_rms"]) if looks else "",
    )
    if known_numel == 0:
        case, confidence = "frozen_unknown", 0.45
    elif fresh_numel >= 0.5 * known_numel:
        case, confidence = "frozen_fresh", 0.85
    else:
        case, confidence = "frozen_trained", 0.3
    text = ctx.text(
        "no_gradient_flow", case, module=module or ctx.text(None, "the_model"), **fields
    )
    return ctx.cause("no_gradient_flow", confidence, text, module=module or None, **fields)


def _under(param: str, module: str) -> bool:
    return not module or param.startswith(module + ".")


def _frozen_roots(meta_params: dict[str, dict[str, Any]], frozen: set[str]) -> list[str]:
    """The shallowest modules all of whose parameters are frozen."""
    modules = {""} | {
        ".".join(n.split(".")[:i]) for n in meta_params for i in range(1, n.count(".") + 1)
    }
    whole = {
        m
        for m in modules
        if (owned := [n for n in meta_params if _under(n, m)]) and set(owned) <= frozen
    }
    # a module inside another wholly frozen one is not a root (`_under` reads names)
    return sorted(m for m in whole if not any(o != m and _under(m, o) for o in whole)) or [""]


def _fresh_init(
    ctx: _Context, name: str, meta: dict[str, Any], tol: float
) -> tuple[int, bool, dict[str, Any]] | None:
    """(numel, looks like the layer type's default init, numbers) for a frozen weight;
    None where no default is known (biases, norms, unknown layer types)."""
    shape, rms, absmax = meta.get("shape") or [], meta.get("rms"), meta.get("absmax")
    module = ctx.modules.get(meta.get("module", ""), {})
    mtype, attrs = module.get("type", ""), module.get("attrs", {})
    if rms is None or absmax is None or len(shape) < 2:
        return None
    leaf = name.rpartition(".")[2]
    if mtype == "Embedding" and leaf == "weight":
        init, expected, bound = "N(0, 1) (nn.Embedding)", 1.0, math.inf
    elif mtype in ("RNN", "LSTM", "GRU") and attrs.get("hidden_size"):
        bound = 1 / math.sqrt(attrs["hidden_size"])
        init, expected = f"U(-{num(bound)}, {num(bound)}) ({mtype})", bound / math.sqrt(3)
    elif mtype == "MultiheadAttention" and leaf == "in_proj_weight":
        bound = math.sqrt(6 / (shape[0] + shape[1]))
        init, expected = f"xavier U(-{num(bound)}, {num(bound)})", bound / math.sqrt(3)
    elif leaf == "weight" and (mtype == "Linear" or mtype.startswith(("Conv", "LazyConv"))):
        fan_in = int(shape[1]) * math.prod(int(k) for k in shape[2:])
        bound = 1 / math.sqrt(fan_in)
        init, expected = f"kaiming U(-{num(bound)}, {num(bound)}) ({mtype})", bound / math.sqrt(3)
    else:
        return None
    fresh = abs(rms / expected - 1) <= tol and absmax <= bound * 1.001
    numel = int(meta.get("numel", 0))
    return numel, fresh, {"init": init, "rms": rms, "expected_rms": expected}


def _gradient_cut(ctx: _Context) -> Cause | None:
    pp = ctx.per_param
    meta_params = ctx.records.meta.get("params", {})
    # frozen but handed to the optimizer: meant to train, yet requires_grad=False
    frozen = [
        n
        for n, m in meta_params.items()
        if m.get("requires_grad") is False
        and m.get("in_optimizer") is True
        and m.get("module") in ctx.called
    ]
    if pp.empty and not frozen:
        return None
    cut = ctx.t("max_grad_share", "no_gradient_flow")
    used = pp[pp["module"].isin(ctx.called) & pp["in_optimizer"]] if not pp.empty else pp
    none = list(used.index[used["has_grad"] <= cut]) if not used.empty else []
    zero = (
        list(used.index[(used["has_grad"] > cut) & (used["grad_pos"] <= cut)])
        if not used.empty
        else []
    )
    if zero and _constant_input(stats := _input_scale(ctx)) and stats["min"] == 0:
        # an input of zeros gives the weights that multiply it a zero gradient: that is the
        # input's doing (`unnormalized_input` says so), not a cut graph
        first = _first_leaf(ctx)
        zero = [n for n in zero if pp.at[n, "module"] != first]
    stopped = none + frozen + zero
    if not stopped:
        return None
    numel = {n: int(meta_params.get(n, {}).get("numel", 1)) for n in stopped}
    total = int(used["numel"].sum() if not used.empty else 0) + sum(numel[n] for n in frozen)
    share = sum(numel.values()) / max(1, total)
    flowing = used[used["grad_pos"] > 0.5] if not used.empty else used
    modules = {meta_params.get(n, {}).get("module", n.rpartition(".")[0]) for n in stopped}
    module = max(modules, key=ctx.forward_pos)
    text = functools.partial(ctx.text, "no_gradient_flow")
    # weights that are exactly zero pass no signal forward and no gradient back: an
    # all-zero initialisation, the root of the zero gradients rather than a cut graph
    zeroed = [n for n in zero if pp.at[n, "ndim"] >= 2 and pp.at[n, "norm"] == 0]
    parts = [
        text(f"cut_{key}", count=len(names), names=_names(names))
        for key, names in (("none", none), ("frozen", frozen), ("zero", zero), ("zeroed", zeroed))
        if names
    ]
    others = (
        text("cut_others", count=len(flowing), grad=num(float(flowing["grad"].median())))
        if len(flowing)
        else ""
    )
    # None gradients are a cut graph for sure; requires_grad=False in the optimizer is
    # often a deliberate freeze; zero gradients also follow from dead units downstream
    if none:
        confidence = 0.6 + 0.3 * share
    elif frozen:
        confidence = 0.5 + 0.3 * share
    else:
        confidence = 0.45 + 0.2 * share
    if zeroed:  # the first zero layer is where the signal stops
        module = min((pp.at[n, "module"] for n in zeroed), key=ctx.forward_pos)
        confidence = max(confidence, 0.8)
    evidence = text(
        "cut",
        sampled=ctx.sampled_steps,
        parts="; ".join(parts),
        share=f"{share:.0%}",
        others=others,
        module=module,
        module_type=ctx.modules.get(module, {}).get("type", "?"),
    )
    first_step = _first_step_only(ctx, stopped, zero, module)
    if first_step is not None:
        cause = ctx.cause(
            "no_gradient_flow", max(confidence, 0.85), f"{evidence}; {first_step}", module=module
        )
        return dataclasses.replace(
            cause,
            first_check=text("first_step_check", module=module),
            fix_attempt=text("first_step_fix", module=module),
        )
    silent = None if none or frozen or zeroed else _zero_output(ctx, module)
    if silent is None:
        return ctx.cause("no_gradient_flow", confidence, evidence, module=module or None)
    # a layer before the cut outputs nothing but zeros: what follows it gets no input to
    # learn from, and nothing before it a gradient (Dropout(p=1.0), a mask of zeros)
    name, zeros, rows = silent
    kind = ctx.modules.get(name, {}).get("type", "?")
    fields = dict(module=name, module_type=kind, zeros=zeros, sampled=rows)
    # a dropout that drops everything: p = 1 (a keep rate written where the drop rate goes)
    dropout = "Dropout" in kind and module_attrs(ctx.records, name).get("p") == 1.0
    cause = ctx.cause(
        "no_gradient_flow",
        max(confidence, 0.85),
        f"{evidence}; {text('zero_output', **fields)}",
        module=name,
    )
    return dataclasses.replace(
        cause,
        first_check=text("zero_output_check", **fields),
        fix_attempt=text("zero_output_dropout_fix" if dropout else "zero_output_fix", **fields),
    )


#: an RNN's hidden-to-hidden weight of a forward direction (`weight_hh_l0`, not `_reverse`)
_RECURRENT_WEIGHT = re.compile(r"(^|\.)weight_hh_l\d+$")
RECURRENT_MODULES = ("LSTM", "GRU", "RNN")


def _first_step_only(ctx: _Context, stopped: list[str], zero: list[str], module: str) -> str | None:
    """The only weights without gradient are a recurrent layer's hidden-to-hidden ones,
    with zero (not None) gradients: they multiply the previous step's hidden state, which
    is zero at the first step, so the loss read the RNN's output at its first step only
    (`out[:, 0]` where the last step was meant), or its sequences have one step."""
    if not stopped or set(stopped) != set(zero):
        return None
    if ctx.modules.get(module, {}).get("type") not in RECURRENT_MODULES:
        return None
    if not all(_RECURRENT_WEIGHT.search(n) for n in stopped):
        return None
    return ctx.text("no_gradient_flow", "first_step", module=module, names=_names(stopped))


def _zero_output(ctx: _Context, before: str | None) -> tuple[str, int, int] | None:
    """The first leaf module, up to `before` in forward order, whose output is exactly
    zero on (nearly) every sampled training step: where the zeros start. None when that
    is a ReLU (a dead ReLU is `dead_relu`'s, and every layer after it outputs zeros too)."""
    act = leaf_activations(ctx.records)
    if act.empty or before is None:
        return None
    limit = ctx.forward_pos(before)
    found = []
    for name, rows in act.groupby("module", sort=False):
        zeros = int((pd.to_numeric(rows["zero_frac"], errors="coerce") >= 0.999).sum())
        if len(rows) >= 3 and zeros >= 0.9 * len(rows) and ctx.forward_pos(name) <= limit:
            found.append((str(name), zeros, len(rows)))
    first = min(found, key=lambda f: ctx.forward_pos(f[0]), default=None)
    if first is None or ctx.modules.get(first[0], {}).get("type") in RELU_FAMILY:
        return None
    return first


def _dead_relu(ctx: _Context) -> Cause | None:
    act = leaf_activations(ctx.records, RELU_FAMILY)
    if act.empty:
        return None
    # the later half of the run in steps, not in samples: sampling thins out over a run
    half = (act["step"].min() + act["step"].max()) / 2
    late = act[act["step"] >= half]
    zf = late.groupby("module", sort=False)["zero_frac"].median()
    limit = ctx.t("zero_frac", "dead_relu")
    dead = zf[zf >= limit]
    if dead.empty:
        return None
    worst = max(dead.index, key=lambda m: (round(float(dead[m]), 3), -ctx.forward_pos(m)))
    # a dead ReLU sits in its negative zone; one fed exact zeros (a layer before it that
    # outputs nothing but 0, e.g. all-zero weights) is not dead: the signal is gone upstream
    leaves = leaf_activations(ctx.records)
    leaves = leaves[(leaves["step"] >= half) & ~leaves["type"].isin(RELU_FAMILY)]
    silent = leaves.groupby("module", sort=False)["max_abs"].median()
    if any(silent[m] == 0 and ctx.forward_pos(m) < ctx.forward_pos(worst) for m in silent.index):
        return None
    frac = float(dead[worst])
    rows = act[act["module"] == worst]
    mtype = str(rows["type"].iloc[0])
    # from the first sampled step after which it stayed dead
    alive = rows[rows["zero_frac"] < limit]["step"]
    died = rows["step"] if alive.empty else rows[rows["step"] > alive.max()]["step"]
    confidence = 0.6 + 0.35 * min(1.0, (frac - limit) / max(1e-9, 1 - limit))
    return ctx.cause(
        "dead_relu",
        confidence,
        module=worst,
        onset=int(died.min()) if len(died) else None,
        zero_pct=f"{frac:.1%}",
        module_type=mtype,
        late=late["step"].nunique(),
        limit=f"{limit:.0%}",
        more=(
            ctx.text("dead_relu", "more", count=len(dead), limit=f"{limit:.0%}")
            if len(dead) > 1
            else ""
        ),
    )


def _gradient_depth(ctx: _Context) -> tuple[pd.DataFrame, float] | None:
    pp = ctx.per_param
    if pp.empty:
        return None
    weights = pp[(pp["ndim"] >= 2) & (pp["grad_pos"] > 0.5) & (pp["grad"] > 0)]
    if len(weights) < ctx.t("min_layers", "vanishing_gradient"):
        return None
    weights = weights.loc[sorted(weights.index, key=lambda n: ctx.forward_pos(pp.loc[n, "module"]))]
    return weights, float(weights["grad"].iloc[0] / weights["grad"].iloc[-1])


def _vanishing_gradient(ctx: _Context) -> Cause | None:
    depth = _gradient_depth(ctx)
    if depth is None:
        return None
    weights, ratio = depth
    limit = ctx.t("first_last_ratio", "vanishing_gradient")
    if ratio >= limit:
        return None
    first, last = weights.index[0], weights.index[-1]
    module = weights.loc[first, "module"]
    g0, g1 = float(weights.loc[first, "grad"]), float(weights.loc[last, "grad"])
    return ctx.cause(
        "vanishing_gradient",
        0.75,
        module=module,
        first_norm=num(g0),
        last_norm=num(g1),
        first_param=first,
        last_param=last,
        layers=len(weights),
        ratio=num(ratio),
        limit=num(limit),
    )


def _update_ratio(ctx: _Context) -> float | None:
    pp = ctx.per_param
    if pp.empty:
        return None
    moving = pp[pp["in_optimizer"] & (pp["ratio"] > 0)]
    if moving.empty:
        return None
    return float(moving["ratio"].median())


def _travel(ctx: _Context, ratio: float) -> float | None:
    """How far the weights can have moved over the whole run, as a share of their size:
    the per-step update/param ratio times the steps (an upper bound: steps may cancel)."""
    steps = ctx.records.meta.get("steps") or 0
    return ratio * steps if steps else None


def _gradient_clipped(ctx: _Context) -> Cause | None:
    """The loop clips the gradients far below their own size on (nearly) every sampled
    step (run.json `grad_clipping`): `clip_grad_norm_` with a max_norm a tenth of the
    norm or less, or `clip_grad_value_` clipping most elements. Under SGD every step then
    shrinks by that factor, whatever the lr."""
    info = ctx.records.meta.get("grad_clipping") or {}
    if not info or not scale_sensitive(ctx.records):
        return None  # Adam and its kin divide the cut back out: their steps keep their size
    t = functools.partial(ctx.t, cause="gradient_clipped")
    text = functools.partial(ctx.text, "gradient_clipped")
    norms = [d for d in info.get("norm") or [] if d.get("max_norm") and d.get("norm_before")]
    values = [d for d in info.get("value") or [] if d.get("share_clipped") is not None]
    if len(norms) >= t("min_steps"):
        cuts = sorted(float(d["norm_before"]) / float(d["max_norm"]) for d in norms)
        hard = [c for c in cuts if c >= t("min_factor")]
        if len(hard) < t("share") * len(cuts):
            return None
        median = cuts[len(cuts) // 2]
        max_norm = float(norms[0]["max_norm"])
        before = sorted(float(d["norm_before"]) for d in norms)[len(norms) // 2]
        kind, onset = "norm", int(norms[0]["step"])
        evidence = text(
            "by_norm",
            max_norm=num(max_norm),
            before=num(before),
            hard=len(hard),
            steps=len(cuts),
            factor=num(median),
        )
        call = f"clip_grad_norm_(model.parameters(), max_norm={num(max_norm)})"
    elif len(values) >= t("min_steps"):
        shares = sorted(float(d["share_clipped"]) for d in values)
        if shares[len(shares) // 2] < t("value_share"):
            return None
        clip = float(values[0]["clip_value"])
        kind, onset = "value", int(values[0]["step"])
        evidence = text(
            "by_value", clip=num(clip), share=f"{shares[len(shares) // 2]:.0%}", steps=len(shares)
        )
        call = f"clip_grad_value_(model.parameters(), clip_value={num(clip)})"
    else:
        return None
    return ctx.cause(
        "gradient_clipped",
        0.85,
        evidence=evidence,
        call=call,
        suggested=text(f"suggested_{kind}"),
        look=text(f"look_{kind}"),
        onset=onset,
    )


def _lr_too_low(ctx: _Context) -> Cause | None:
    """Updates two orders below the healthy ~1e-3; or, on a run whose loss sits flat,
    updates merely small that over all its steps moved the weights by a few % at most:
    too little to learn anything (a fine-tuning lr on a model trained from scratch)."""
    ratio = _update_ratio(ctx)
    low = ctx.t("update_ratio_low", "lr_too_low")
    if ratio is None:
        return None
    travel = _travel(ctx, ratio)
    flat = ctx.flat
    slow = (
        ratio >= low
        and travel is not None
        and ratio < ctx.t("slow_ratio", "lr_too_low")
        and travel < ctx.t("travel_min", "lr_too_low")
        # and the model knows nothing yet: a pretrained model fine-tuned gently sits well
        # below the constant prediction with small updates, and that is no bug
        and flat.baseline is not None
        and flat.end >= (1 - ctx.t("below_baseline", "label_mismatch")) * flat.baseline
    )
    if ratio >= low and not slow:
        return None
    pp = ctx.per_param
    rel_grad = float(pp[pp["in_optimizer"] & (pp["grad_pos"] > 0.5)]["rel_grad"].median())
    healthy_grads = rel_grad >= ctx.t("grad_ratio_healthy", "lr_too_low")
    factor = 10 ** max(1, round(math.log10(1e-3 / ratio)))
    lr = ctx.lr
    text = functools.partial(ctx.text, "lr_too_low")
    known = math.isfinite(lr)
    cause = ctx.cause(
        "lr_too_low",
        (0.7 if healthy_grads else 0.45) if slow else (0.85 if healthy_grads else 0.5),
        lr=num(lr) if known else text("lr_unknown"),
        ratio=num(ratio),
        factor=f"{factor:g}",
        suggested_lr=num(lr * factor) if known else text("suggested_lr_unknown"),
        at_lr=ctx.at_lr(),
        grads=text("healthy_grads" if healthy_grads else "small_grads", rel_grad=num(rel_grad)),
    )
    if not slow:
        return cause
    steps = ctx.records.meta.get("steps")
    moved = text("travel", steps=steps, travel=f"{travel:.1%}")
    return dataclasses.replace(cause, evidence=f"{cause.evidence}; {moved}")


def _weight_growth(ctx: _Context) -> dict[str, Any] | None:
    """How the trained weights' norms moved from the first to the last sampled step.

    The median of last/first over the matrices (ndim >= 2; biases start near 0 and say
    nothing), and the weight that moved most, both ways: steps too large throw weights
    outward, a decay too strong pulls them to 0; a healthy run moves them by a few %."""
    p = ctx.records.params
    pp = ctx.per_param
    if p.empty or pp.empty:
        return None
    weights = [n for n in pp.index if pp.at[n, "in_optimizer"] and pp.at[n, "ndim"] >= 2]
    p = p[p["param"].isin(weights)].sort_values("step")
    ends = p.groupby("param", sort=False)["param_norm"].agg(["first", "last"])
    ends = ends[(ends["first"] > 0) & ends["last"].notna()]
    if ends.empty or p["step"].nunique() < 2:
        return None
    growth = ends["last"] / ends["first"]
    up, down = growth.idxmax(), growth.idxmin()
    return {
        "median": float(growth.median()),
        "up": (str(up), float(ends.at[up, "first"]), float(ends.at[up, "last"])),
        "down": (str(down), float(ends.at[down, "first"]), float(ends.at[down, "last"])),
        "weights": len(ends),
    }


def _lr_too_high(ctx: _Context) -> Cause | None:
    """Steps so large the weights are thrown about while the loss stays put: the loss
    sits at (or noisily around) the constant prediction, not rising enough to diverge.
    Or one of the first steps replaced the weights and the loss jumped: the network
    was wrecked at once (dead ReLUs, no gradient) and has sat flat since."""
    wrecked = _wrecked_early(ctx)
    if wrecked is not None:
        return wrecked
    ratio = _update_ratio(ctx)
    growth = _weight_growth(ctx)
    if ratio is None or growth is None:
        return None
    high = ctx.t("ratio_high", "lr_too_high")
    growth_min = ctx.t("growth_min", "lr_too_high")
    if ratio < high or growth["median"] < growth_min:
        return None
    if _zero_grad_missing(ctx) is not None:
        return None  # the steps are large because gradients pile up, not because of the lr
    param, n0, n1 = growth["up"]
    lr = ctx.lr
    # 0.5 at the thresholds, more the further above them
    confidence = 0.5 + 0.2 * min(1.5, math.log10(ratio / high))
    confidence += 0.1 * min(1.0, math.log10(growth["median"] / growth_min))
    return ctx.cause(
        "lr_too_high",
        confidence,
        module=ctx.per_param.at[param, "module"] if param in ctx.per_param.index else None,
        lr=num(lr) if math.isfinite(lr) else ctx.text("lr_too_high", "lr_unknown"),
        at_lr=ctx.at_lr(),
        weights=growth["weights"],
        ratio=num(ratio),
        growth=num(growth["median"]),
        param=param,
        norm_start=num(n0),
        norm_end=num(n1),
        loss_end=num(ctx.flat.end),
    )


def _wrecked_early(ctx: _Context) -> Cause | None:
    """A whole-model update/param ratio of about 1 on one of the first sampled steps (the
    update replaced the weights), and the loss of the next steps jumped far above the
    loss of that step. Both are needed: a model initialised at zero also has a first
    ratio of 1 (its weights after the step are the update), but no jump."""
    if _zero_grad_missing(ctx) is not None:
        return None  # the steps are large because gradients pile up, not because of the lr
    dyn = dynamics(ctx.records)
    if dyn is None or dyn.ratios is None:
        return None
    loss = ctx.records.train_loss()
    if loss.empty:
        return None
    blown = ctx.t("blown_ratio", "lr_too_high")
    jump = ctx.t("blown_jump", "lr_too_high")
    for step, ratio in dyn.ratios.iloc[: int(ctx.t("blown_steps", "lr_too_high"))].items():
        at = loss[loss.index == step]
        after = loss[(loss.index > step) & (loss.index <= step + 3)]
        if not ratio >= blown or at.empty or after.empty:
            continue
        before, peak = float(at.iloc[0]), float(after.max())
        if not (before > 0 and peak >= jump * before):
            continue
        # the lr of that step (a schedule may have moved it since)
        steps = ctx.records.steps
        at_step = steps.loc[steps["step"] == step, "lr"] if len(steps) else steps
        lr = float(at_step.iloc[0]) if len(at_step) else ctx.lr
        at_lr = (
            ctx.text(None, "at_lr", lr=num(lr), optimizer=ctx.optimizer_class)
            if math.isfinite(lr)
            else ctx.text(None, "at_unknown_lr")
        )
        fields = dict(
            step=int(step),
            ratio=num(float(ratio)),
            before=num(before),
            peak=num(peak),
            peak_step=int(after.idxmax()),
            loss_end=num(ctx.flat.end),
            lr=num(lr) if math.isfinite(lr) else ctx.text("lr_too_high", "lr_unknown"),
            at_lr=at_lr,
        )
        cause = ctx.cause(
            "lr_too_high",
            0.9,
            evidence=ctx.text("lr_too_high", "blown_evidence", **fields),
            onset=int(step),
            weights="",
            growth="",
            param="",
            norm_start="",
            norm_end="",
            **fields,
        )
        return dataclasses.replace(
            cause,
            first_check=ctx.text("lr_too_high", "blown_check", **fields),
            fix_attempt=ctx.text("lr_too_high", "blown_fix", **fields),
        )
    return None


def _input_scale(ctx: _Context) -> dict[str, float] | None:
    inputs = ctx.records.inputs
    inputs = inputs[inputs["split"] == "train"]
    if inputs.empty:
        return None
    med = inputs[["mean", "std"]].median()
    return {
        "mean": float(med["mean"]),
        "std": float(med["std"]),
        "min": float(inputs["min"].min()),
        "max": float(inputs["max"].max()),
        "scale": max(abs(float(med["mean"])), float(med["std"])),
        "rows": len(inputs),
    }


def _constant_input(stats: dict[str, float] | None) -> bool:
    """Every value of the model's (first floating-point) input on every sampled training
    step was the same: blank images, a misspelt column filled with zeros, a transform that
    wiped the batch. Such an input carries nothing to learn from."""
    return stats is not None and math.isfinite(stats["min"]) and stats["min"] == stats["max"]


def _input_off_scale(ctx: _Context, stats: dict[str, float] | None) -> bool:
    if stats is None:
        return False
    if _constant_input(stats):
        return True
    big = stats["scale"] > ctx.t("scale_max", "unnormalized_input")
    small = 0 < stats["scale"] < ctx.t("scale_min", "unnormalized_input")
    return big or small


def _unnormalized_input(ctx: _Context) -> Cause | None:
    stats = _input_scale(ctx)
    if not _input_off_scale(ctx, stats):
        return _outlier_rows(ctx)
    assert stats is not None
    first = _first_leaf(ctx)
    if _constant_input(stats):
        return _constant_input_cause(ctx, stats, first)
    far = stats["scale"] / ctx.t("scale_max", "unnormalized_input")
    return ctx.cause(
        "unnormalized_input",
        0.8 if far >= 10 or stats["scale"] < ctx.t("scale_min", "unnormalized_input") else 0.65,
        module=first,
        mean=num(stats["mean"]),
        std=num(stats["std"]),
        min=num(stats["min"]),
        max=num(stats["max"]),
        rows=stats["rows"],
        receives=ctx.text("unnormalized_input", "receives", first=first) if first else "",
    )


def _outlier_rows(ctx: _Context) -> Cause | None:
    """A typical batch at unit scale, a few with rows 100x off it (`input_outliers`): the
    steps on those batches can wreck the network (dead ReLUs, weights thrown far) and
    leave the loss flat after them."""
    t = functools.partial(ctx.t, cause="unnormalized_input")
    found = input_outliers(ctx.records, t("outlier_factor"), t("max_outlier_share"), 5)
    if found is None:
        return None
    text = functools.partial(ctx.text, "unnormalized_input")
    first = _first_leaf(ctx)
    fields = dict(
        peak=num(found["peak"]),
        hit=found["hit"],
        sampled=found["sampled"],
        typical=num(found["typical"]),
        factor=num(found["factor"]),
    )
    cause = ctx.cause(
        "unnormalized_input",
        0.8,
        text("outliers_evidence", **fields),
        module=first,
        onset=found["first_step"],
        mean="?",
        std="?",
        min="?",
        max="?",
        rows=found["sampled"],
        receives="",
    )
    return dataclasses.replace(
        cause,
        first_check=text("outliers_check", **fields),
        fix_attempt=text("outliers_fix", **fields),
    )


def _first_leaf(ctx: _Context) -> str | None:
    """The first leaf module to run: the one that receives the model's input."""
    return min(
        (m for m in ctx.order if ctx.modules.get(m, {}).get("leaf")),
        key=ctx.forward_pos,
        default=None,
    )


def _constant_input_cause(ctx: _Context, stats: dict[str, float], first: str | None) -> Cause:
    """The input does not vary: the loss can only sit at the level of the average target.
    Less sure when the model takes other tensors too (only its first is recorded)."""
    text = functools.partial(ctx.text, "unnormalized_input")
    value = num(stats["min"])
    receives = text("receives", first=first) if first else ""
    cause = ctx.cause(
        "unnormalized_input",
        0.85 if _model_tensor_inputs(ctx) <= 1 else 0.5,
        text("constant_evidence", value=value, rows=stats["rows"], receives=receives),
        module=first,
        mean=num(stats["mean"]),
        std=num(stats["std"]),
        min=value,
        max=value,
        rows=stats["rows"],
        receives=receives,
    )
    return dataclasses.replace(
        cause, first_check=text("constant_check", value=value), fix_attempt=text("constant_fix")
    )


def _model_tensor_inputs(ctx: _Context) -> int:
    """How many tensors the model's own call takes (its first shape-trace row); 1 if unknown."""
    shapes = ctx.records.shapes
    if shapes.empty or "inputs" not in shapes.columns:
        return 1
    root = shapes[shapes["module"] == ""]
    if root.empty:
        return 1
    try:
        return max(1, len(json.loads(root["inputs"].iloc[0])))
    except (TypeError, ValueError):
        return 1


def _unnormalized_target(ctx: _Context) -> Cause | None:
    """Regression targets far from unit scale that the outputs never come near: a network
    starts with outputs near 0 and moves them by small steps, so the loss sits far above
    what even predicting the mean target would score."""
    li = ctx.records.loss_inputs
    if "target_rms" not in li.columns:
        return None  # a run recorded before the target scale was
    li = li[(li["split"] == "train") & li["target_rms"].notna()].sort_values("step")
    flat = ctx.flat
    if li.empty or flat.baseline is None or flat.baseline_kind != "MSELoss":
        return None
    rms = float(li["target_rms"].iloc[-1])
    if not rms >= ctx.t("target_rms_min", "unnormalized_target"):
        return None
    late = li.tail(max(1, len(li) // 4))
    low, high = float(late["min"].min()), float(late["max"].max())
    reach = max(abs(low), abs(high))
    if not reach <= ctx.t("output_share_max", "unnormalized_target") * rms:
        return None
    if not flat.end >= ctx.t("above_baseline", "unnormalized_target") * flat.baseline:
        return None  # it does about as well as the mean: not stuck below the targets' scale
    return ctx.cause(
        "unnormalized_target",
        0.85,
        rms=num(rms),
        low=num(low),
        high=num(high),
        loss=num(flat.end),
        baseline=num(flat.baseline),
        ratio=num(flat.end / flat.baseline),
    )


def _stalled_at_bound(records: Records, catalogue: Catalogue) -> Finding | None:
    """The loss moved, then stopped at the floor `_bounded_output` measures."""
    if not _has_target_range(records):
        return None
    ctx = _Context.unflat(records, catalogue)
    cause = _bounded_output(ctx)
    if cause is None:
        return None
    return catalogue.finding(SYMPTOM, "error", [cause], evidence=ctx.flat.evidence())


def _has_target_range(records: Records) -> bool:
    li = records.loss_inputs
    return "target_below_mse" in li.columns and bool(li["target_below_mse"].notna().any())


def _bounded_output(ctx: _Context) -> Cause | None:
    """A regression model whose output cannot cross a bound (0 after a final ReLU, [0, 1]
    after a sigmoid) while many targets lie beyond it: the squared distance of those
    targets to the bound is a floor under the MSE, and the loss sits on it."""
    if not _has_target_range(ctx.records):
        return None  # no regression loss, or a run recorded before the targets' range was
    li = ctx.records.loss_inputs
    li = li[(li["split"] == "train") & li["target_below_mse"].notna()].sort_values("step")
    if li.empty:
        return None
    li = li[li["loss"] == li["loss"].mode().iloc[0]]  # one regression loss: the main one
    if len(li) < ctx.t("min_looks", "bounded_output"):
        return None
    late = li.tail(len(li) // 2)
    loss = ctx.records.train_loss().reindex(late["step"].unique())
    level = float(loss.median())
    baseline = float(late["baseline"].median())
    rms = float(late["target_rms"].median())
    if not (level > 0 and baseline > 0 and rms > 0):
        return None
    last = _last_leaf(ctx)
    kind = ctx.modules.get(last, {}).get("type") if last is not None else None
    bounds = BOUNDED_OUTPUTS.get(kind or "")
    # an output pressed against its layer's bound stays a little short of it (a tanh's
    # at 0.93): within a share of the range, or of the targets' scale when it is open
    if bounds is not None and math.isfinite(bounds[1] - bounds[0]):
        tol = ctx.t("range_tolerance", "bounded_output") * (bounds[1] - bounds[0])
    else:
        tol = ctx.t("scale_tolerance", "bounded_output") * rms
    sides = []
    for i, (side, edge_col) in enumerate((("below", "min"), ("above", "max"))):
        share = float(late[f"target_{side}_share"].median())
        floor = float(late[f"target_{side}_mse"].median())
        edges = late[edge_col].astype(float)
        edge = float(edges.median())
        at_bound = bounds is not None and math.isfinite(bounds[i]) and abs(edge - bounds[i]) <= tol
        # a functional `torch.relu` at the end: no layer says so, the output shows it
        pinned = float(edges.max() - edges.min()) <= 1e-6 * max(1.0, abs(edge))
        if (at_bound or pinned) and share >= ctx.t("target_share", "bounded_output"):
            sides.append((side, share, floor, edge, at_bound))
    if not sides:
        return None
    floor = sum(s[2] for s in sides)
    if floor < ctx.t("floor_share", "bounded_output") * level:
        return None
    if floor < ctx.t("baseline_share", "bounded_output") * baseline:
        return None
    text = functools.partial(ctx.text, "bounded_output")
    by_layer = all(s[4] for s in sides)
    if by_layer:
        lo, hi = bounds  # type: ignore[misc]
        shown_range = f"[{num(lo)}, +inf)" if math.isinf(hi) else f"[{num(lo)}, {num(hi)}]"
        seen = text("seen_module", module=last, type=kind, range=shown_range)
        fix_key = "fix_unbounded" if math.isinf(hi) else "fix_bounded"
        fix = text(fix_key, type=kind, range=shown_range)
    else:
        side, _, _, edge, _ = sides[0]
        seen = text("seen_pinned", direction=text(side), edge=num(edge))
        fix = text("fix_pinned")
    if len(sides) == 2:
        where = text("where_both", low=num(sides[0][3]), high=num(sides[1][3]))
    else:
        where = text(f"where_{sides[0][0]}", edge=num(sides[0][3]))
    return ctx.cause(
        "bounded_output",
        0.9,
        module=last if by_layer else None,
        onset=int(late["step"].iloc[0]),
        share=f"{sum(s[1] for s in sides):.0%}",
        where=where,
        seen=seen,
        floor=num(floor),
        loss=num(level),
        looks=len(late),
        floor_share=f"{floor / level:.0%}",
        baseline=num(baseline),
        baseline_share=f"{floor / baseline:.0%}",
        fix=fix,
    )


def _last_leaf(ctx: _Context) -> str | None:
    """The leaf module that ran last in the forward: what made the model's output."""
    leaves = [n for n, m in ctx.modules.items() if m.get("leaf") and n in ctx.called]
    return max(leaves, key=ctx.forward_pos) if leaves else None


def _label_mismatch(ctx: _Context) -> Cause | None:
    flat = ctx.flat
    if flat.baseline is None:
        return None
    tol = ctx.t("baseline_tolerance", "label_mismatch")
    if abs(flat.end - flat.baseline) > tol * flat.baseline:
        return None
    if flat.end < (1 - ctx.t("below_baseline", "label_mismatch")) * flat.baseline:
        return None  # clearly below the best constant prediction: the inputs explain some
    # its own evidence: the loss is at the constant-prediction level *and* the machinery
    # is demonstrably healthy, so the model could learn if the targets allowed it
    pp = ctx.per_param
    trained = pp[pp["in_optimizer"]] if not pp.empty else pp
    if trained.empty or (trained["grad_pos"] < 0.9).any():
        return None
    if _unregistered(ctx) is not None:
        return None  # layers of the forward that never train: the machinery is not healthy
    if ctx.records.meta.get("identical_rows"):
        return None  # units that cannot part: the model is as good as one unit per layer
    if sorted_batches(ctx.records, ctx.catalogue) is not None:
        return None  # batches of one class each: the model chases the latest, the overfitting
        # rule's finding says so
    ratio = _update_ratio(ctx)
    lo = ctx.t("update_ratio_min", "label_mismatch")
    hi = ctx.t("update_ratio_max", "label_mismatch")
    if ratio is None or not lo <= ratio <= hi:
        return None
    travel = _travel(ctx, ratio)
    if travel is not None and travel < ctx.t("travel_min", "lr_too_low"):
        return None  # the weights barely moved over the run: the level proves nothing yet
    growth = _weight_growth(ctx)
    if growth is not None and growth["median"] < ctx.t("shrink_min", "label_mismatch"):
        return None  # the weights are being decayed toward 0, not fitted: not healthy
    depth = _gradient_depth(ctx)
    if depth is not None and depth[1] < ctx.t("first_last_ratio", "vanishing_gradient"):
        return None
    act = leaf_activations(ctx.records, RELU_FAMILY)
    if not act.empty and act.groupby("module")["zero_frac"].median().max() >= ctx.t(
        "zero_frac", "dead_relu"
    ):
        return None
    if _input_off_scale(ctx, _input_scale(ctx)):
        return None
    if any(c is not None for c in (_softmax_before_loss(ctx), _zero_grad_missing(ctx))):
        return None
    text = functools.partial(ctx.text, "label_mismatch")
    fields = dict(
        baseline=num(flat.baseline),
        baseline_what=ctx.baseline_what,
        constant=text("mean_target" if flat.baseline_kind == "MSELoss" else "class_prior"),
        loss_end=num(flat.end),
        tol=f"{tol:.0%}",
        ratio=num(ratio),
        params=len(trained),
        depth_note=text("depth_note", ratio=num(depth[1])) if depth else "",
        ruled_out=_ids(ctx),
    )
    gap = 1 - flat.end / flat.baseline
    weak = gap >= ctx.t("weak_below", "label_mismatch")
    # a conclusion by elimination (`fallback` in the recipe): says what it ruled out
    cause = ctx.cause(
        "label_mismatch",
        ctx.t("fallback_confidence", "label_mismatch"),
        evidence=text("weak", gap=f"{gap:.1%}", **fields) if weak else None,
        **fields,
    )
    if weak:  # a little below the constant prediction: the inputs explain a little
        cause = dataclasses.replace(
            cause, first_check=text("weak_check", gap=f"{gap:.1%}", **fields)
        )
    return cause


def _ids(ctx: _Context) -> str:
    return ", ".join(ctx.ruled_out) or ctx.text(None, "nothing")


def _other_side_trained(ctx: _Context) -> bool:
    """Another optimizer stepped, in most steps, parameters of another model: a GAN's
    discriminator (or generator), an actor-critic's critic. The loss is a contest between
    the two, and its level says nothing on its own. A second optimizer over part of the
    watched model (`SparseAdam` for its embeddings) is no contest: the loss should fall."""
    meta = ctx.records.meta
    others = (meta.get("loop_order") or {}).get("other_optimizers") or []
    steps = int(meta.get("steps") or 0)
    share = ctx.t("other_optimizer_share", "unknown")
    return steps > 0 and any(
        o.get("params_outside", 0) > o.get("in_model", 0) and o.get("steps", 0) >= share * steps
        for o in others
    )


def _unknown(ctx: _Context) -> Cause | None:
    """Flat with no specific evidence: an honest "not sure", with the generic checks.

    Only for a run that learned nothing at all: its loss ends at the constant-prediction
    level, or (no level known) not clearly below its very first value. A run that fell
    fast in its first window and then settled learned something; it stays silent.
    """
    if sorted_batches(ctx.records, ctx.catalogue) is not None:
        return None  # explained: batches of one class each (the overfitting rule's finding)
    flat = ctx.flat
    curve = ctx.records.train_loss()
    first = float(curve.iloc[0]) if len(curve) else flat.start
    if flat.baseline is not None:
        if flat.end < (1 - ctx.t("below_baseline", "label_mismatch")) * flat.baseline:
            return None  # it beats the best constant prediction: it learned something
    elif not math.isfinite(first) or flat.end < (1 - ctx.t("max_drop")) * first:
        return None
    level = (
        ctx.text(
            "unknown", "baseline", baseline=num(flat.baseline), baseline_what=ctx.baseline_what
        )
        if flat.baseline is not None
        else ""
    )
    growth = _weight_growth(ctx)
    weights = ""
    if growth is not None and growth["median"] < ctx.t("shrink_min", "label_mismatch"):
        param, n0, n1 = growth["down"]
        weights = ctx.text(
            "unknown", "shrinking", shrink=num(growth["median"]), param=param,
            norm_start=num(n0), norm_end=num(n1),
        )  # fmt: skip
    return ctx.cause(
        "unknown",
        ctx.t("fallback_confidence", "unknown"),
        start=num(flat.start),
        end=num(flat.end),
        n=flat.n,
        by=flat.by,
        level=level,
        ruled_out=_ids(ctx),
        weights=weights,
    )
