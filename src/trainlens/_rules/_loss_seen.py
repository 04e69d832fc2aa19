"""A run that trained but recorded no loss: say so, never "no problems found".

Without a loss the flat, diverging, overfitting and initial-loss checks have nothing to
read, and an empty drill would read as an all-clear. The SPEC's catalogue has no symptom
for "no loss": the finding is filed under `flat_loss` (the symptom whose check is the
first to go blind) with its own cause `no_loss_recorded`, always as a warning. Called by
`flat_loss.py`, which owns the cause.
"""

from __future__ import annotations

from .._catalogue import Catalogue
from .._finding import Finding
from .._records import Records

_SYMPTOM = "flat_loss"
CAUSE = "no_loss_recorded"


def finding(records: Records, catalogue: Catalogue) -> Finding | None:
    if _SYMPTOM not in catalogue or CAUSE not in catalogue[_SYMPTOM].causes:
        return None
    meta = records.meta
    if meta.get("exception"):
        return None  # a crash has its own story; the missing loss is not the news
    steps = int(meta.get("steps") or 0)
    backward = int(meta.get("backward_passes") or 0)
    if max(steps, backward) == 0 or len(records.losses):
        return None  # nothing trained (or the loss was seen): nothing to say
    cause = catalogue.cause(
        _SYMPTOM,
        CAUSE,
        confidence=1.0,
        steps=max(steps, backward),
        optimizer_steps=steps,
        backward_passes=backward,
    )
    return catalogue.finding(
        _SYMPTOM,
        "warning",
        [cause],
        evidence={"losses_seen": 0, "steps": steps, "backward_passes": backward},
    )
