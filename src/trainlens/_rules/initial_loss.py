"""flat_loss / bad_initial_loss: the loss at initialisation is far from a uniform guess.

An untrained classifier should guess uniformly, so its first cross-entropy is close to
ln(C) for C classes (ln 2 for binary cross-entropy). Far above it: logits are huge from
the start (a bad init, a missing scaling). Below zero: the loss got the wrong kind of
input (`NLLLoss` on probabilities instead of log-probabilities) or targets outside
their range. Reads `meta["initial_loss"]` (`_probes/_initloss.py`).

The cause belongs to the `flat_loss` symptom; its texts live in `recipes/flat_loss.toml`.
"""

from __future__ import annotations

import math
from typing import Any

from .._catalogue import Catalogue
from .._finding import Finding
from .._hookspecs import hookimpl
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


@hookimpl
def trainlens_diagnose(records: Records, catalogue: Catalogue) -> list[Finding]:
    info = records.meta.get("initial_loss")
    if not info or SYMPTOM not in catalogue or CAUSE not in catalogue[SYMPTOM].causes:
        return []  # no recipe text for the cause (yet): nothing to say it with
    high_ratio = catalogue.threshold(SYMPTOM, "initial_loss_ratio", CAUSE)
    high_margin = catalogue.threshold(SYMPTOM, "initial_loss_margin", CAUSE)
    verdict = judge_initial_loss(info, high_ratio, high_margin)
    if verdict is None:
        return []
    expected = expected_initial_loss(info)
    assert expected is not None
    loss, value, classes = info["loss"], info["value"], info["classes"]
    level = f"ln({classes}) = {num(expected)}"
    if verdict == "negative":
        evidence = (
            f"{loss} at initialisation is {num(value)}, below zero: impossible for "
            f"{loss} on the inputs it expects (a uniform guess gives {level})"
        )
        if loss == "NLLLoss":
            suspect = (
                "NLLLoss expects log-probabilities; it got values in "
                f"{_range(info.get('input_range'))}, which look like probabilities"
            )
            suggestion = (
                "End the model with `nn.LogSoftmax(dim=1)` instead of `nn.Softmax`, or drop "
                "the softmax and use `nn.CrossEntropyLoss` on the raw logits."
            )
        else:
            suspect = f"the targets range over {_range(info.get('target_range'))}"
            suggestion = (
                f"{loss} needs targets in [0, 1]: map the labels to 0/1 (or probabilities) "
                "before the loss."
            )
        severity = "error"
    else:
        evidence = (
            f"{loss} at initialisation is {num(value)}, {num(value / expected)}x the "
            f"{level} of a uniform guess over {classes} classes"
        )
        suspect = (
            "the logits are far from zero before any training: a scaled-up init, a "
            "missing 1/sqrt(d) or temperature, or inputs far from unit scale"
        )
        suggestion = (
            "Initialise the last layer small (e.g. `nn.init.zeros_(head.weight)` and "
            "zeros for its bias), remove any multiplier on the logits, and normalise the "
            "inputs to unit scale."
        )
        severity = "warning"
    cause = catalogue.cause(
        SYMPTOM,
        CAUSE,
        confidence=0.85 if verdict == "negative" else 0.6,
        evidence=evidence,
        step=int(info.get("step", 0)),
        loss=loss,
        value=num(value),
        expected=level,
        suspect=suspect,
        suggestion=suggestion,
    )
    return [catalogue.finding(SYMPTOM, severity, [cause], evidence={"initial_loss": info})]


def _range(r: list[float] | None) -> str:
    return "?" if not r else f"[{num(r[0])}, {num(r[1])}]"
