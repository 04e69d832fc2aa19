"""flat_loss / bad_initial_loss: the loss at initialisation is far from a uniform guess.

An untrained classifier should guess uniformly, so its first cross-entropy is close to
ln(C) for C classes (ln 2 for binary cross-entropy). Far above it: logits are huge from
the start (a bad init, a missing scaling), or a binary loss's targets leave [0, 1] (0/255
masks: then whatever the first loss). Below zero: the loss got the wrong kind of input
(`NLLLoss` on probabilities instead of log-probabilities) or targets outside their range.
Reads `meta["initial_loss"]` (`_probes/_initial_loss.py`).

A cause of the `flat_loss` symptom, owned by `flat_loss.py` (which calls `finding`);
the numbers are decided here, the words are `recipes/flat_loss.toml`'s.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .._catalogue import Catalogue
from .._finding import Finding
from .._records import Records
from ._common import num

SYMPTOM = "flat_loss"
CAUSE = "bad_initial_loss"


def expected_initial_loss(info: dict[str, Any]) -> float | None:
    """The first loss of a model that guesses uniformly, where the loss says what that is."""
    if info.get("reduction", "mean") != "mean" or not info.get("classes"):
        return None
    if info["kind"] == "multiclass" and info["classes"] >= 2:
        return math.log(info["classes"])
    if info["kind"] == "binary" and not info.get("weighted"):
        return math.log(2)
    return None


def judge_initial_loss(info: dict[str, Any], high_ratio: float, high_margin: float) -> str | None:
    """'negative', 'high' or None (fine, or nothing to compare with)."""
    expected = expected_initial_loss(info)
    value = info.get("value")
    if expected is None or value is None or not math.isfinite(value):
        return None
    if value < 0:
        return "negative"
    if value > high_ratio * expected and value - expected > high_margin:
        return "high"
    return None


def finding(records: Records, catalogue: Catalogue) -> Finding | None:
    """The bad_initial_loss finding, or None when the first loss is fine or unknown."""
    info = records.meta.get("initial_loss")
    if not info or SYMPTOM not in catalogue or CAUSE not in catalogue[SYMPTOM].causes:
        return None  # no recipe text for the cause (yet): nothing to say it with
    high_ratio = catalogue.threshold(SYMPTOM, "initial_loss_ratio", CAUSE)
    high_margin = catalogue.threshold(SYMPTOM, "initial_loss_margin", CAUSE)
    verdict = judge_initial_loss(info, high_ratio, high_margin)
    expected = expected_initial_loss(info)
    if verdict is None and expected is not None and binary_targets_off(info):
        verdict = "targets"  # the first loss may look plausible: the targets are wrong anyway
    if verdict is None:
        return None
    assert expected is not None
    loss, value, classes = info["loss"], info["value"], info["classes"]
    # which of the recipe's texts fits: the verdict, and for a negative loss its kind; a
    # high first loss of a binary loss on targets outside [0, 1] (masks stored as 0/255
    # images) is the targets' doing, not the logits'
    case = "high"
    if verdict == "negative":
        case = "negative_nll" if loss == "NLLLoss" else "negative_targets"
    elif binary_targets_off(info):
        case = "targets_range"
    certain = case != "high"
    fields = dict(
        loss=loss,
        value=num(value),
        expected=f"ln({classes}) = {num(expected)}",
        classes=classes,
        times=num(value / expected),
        input_range=_range(info.get("input_range")),
        target_range=_range(info.get("target_range")),
    )
    text = lambda key: catalogue.text(SYMPTOM, CAUSE, f"{case}_{key}", **fields)  # noqa: E731
    suggestion = text("suggestion")
    tied = records.meta.get("tied_params") or {}
    if case == "high" and tied:
        # a head tied to the embedding: the usual "zero the last layer" zeroes both
        alias, shared = next(iter(tied.items()))
        suggestion = catalogue.text(
            SYMPTOM, CAUSE, "high_tied_suggestion", alias=alias, shared=shared, **fields
        )
    cause = catalogue.cause(
        SYMPTOM,
        CAUSE,
        confidence=0.85 if certain else 0.6,
        evidence=text("evidence"),
        step=int(info.get("step", 0)),
        onset=int(info.get("step", 0)),
        suspect=text("suspect"),
        suggestion=suggestion,
        **fields,
    )
    causes = [cause]
    squashed = (
        _probabilities_into_nll(records, catalogue, info, fields)
        if case == "negative_nll"
        else None
    )
    if squashed is not None:
        causes.insert(0, squashed)
    severity = "error" if certain else "warning"
    return catalogue.finding(SYMPTOM, severity, causes, evidence={"initial_loss": info})


def binary_targets_off(info: dict[str, Any]) -> bool:
    """A binary cross-entropy whose first targets leave [0, 1]: torch takes them without a
    word, and every step then pulls the outputs towards a probability that cannot be."""
    r = info.get("target_range")
    return info.get("kind") == "binary" and bool(r) and (r[0] < -1e-6 or r[1] > 1 + 1e-6)


#: modules that end a model with normalised rows (flat_loss.SOFTMAX_MODULES, but the
#: log-softmax is what NLLLoss wants)
_SQUASHING = ("Softmax", "Softmax2d", "Sigmoid")


def _probabilities_into_nll(
    records: Records, catalogue: Catalogue, info: dict[str, Any], fields: dict[str, Any]
) -> Any:
    """A negative first NLLLoss whose input lies in [0, 1]: the model ends in a softmax
    where NLLLoss wants a log-softmax, the `softmax_before_loss` mistake, which ranks
    above the bare observation that the first loss is impossible."""
    r = info.get("input_range")
    if not r or r[0] < -1e-6 or r[1] > 1 + 1e-6:
        return None
    modules = records.meta.get("modules") or {}
    squash = [n for n, m in modules.items() if (m or {}).get("type") in _SQUASHING]
    module = squash[-1] if squash else None  # named_modules order: the last one defined
    module_type = modules[module]["type"] if module is not None else "Softmax"
    # the recipe's first check and fix speak of logits losses; NLLLoss gets its own below
    cause = catalogue.cause(
        SYMPTOM,
        "softmax_before_loss",
        confidence=0.9,
        evidence=catalogue.text(SYMPTOM, "softmax_before_loss", "nll_evidence", **fields),
        module=module,
        step=int(info.get("step", 0)),
        onset=int(info.get("step", 0)),
        loss=fields["loss"],
        kind="",
        printout="",
        applies="",
        module_type=module_type,
        floor=num(-1.0),
    )
    where = f"`{module}` ({module_type})" if module is not None else "a softmax"
    return dataclasses.replace(
        cause,
        first_check=catalogue.text(
            SYMPTOM, "softmax_before_loss", "nll_check", where=where, **fields
        ),
        fix_attempt=catalogue.text(
            SYMPTOM, "softmax_before_loss", "nll_fix", where=where, **fields
        ),
    )


def _range(r: list[float] | None) -> str:
    return "?" if not r else f"[{num(r[0])}, {num(r[1])}]"
