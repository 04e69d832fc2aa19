"""shape_mismatch: a layer or loss crashed on a shape, or a loss silently broadcast.

Batch mixing comes from the batch-dependency check (`meta["batch_dependency"]`, see
`_probes/_batch_dependency.py`): the gradient of one sample's output w.r.t. the other samples'
inputs, and the first module on the way whose tensors mix samples.

Evidence comes from the failure record (`meta["exception"]`: the innermost module whose
forward raised, the shapes it received) compared with that module's own configuration
(`in_features`, `in_channels`, ...), and from `loss_broadcast` events.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .._catalogue import Catalogue
from .._finding import Finding
from .._hookspecs import hookimpl
from .._records import Records
from ._common import exception_info, is_oom, module_attrs, shape_str
from ._common import model_module as _model_module

SYMPTOM = "shape_mismatch"
#: the causes this rule decides (checked by tests/test_catalogue.py)
CAUSES = frozenset({"layer_input_mismatch", "loss_target_shape_mismatch", "batch_dim_mixing"})

# Messages torch raises for shape problems, for layers whose expectations we do not model.
_SHAPE_MESSAGE = re.compile(
    r"shape|size|dimension|mat1 and mat2|must match|channels|normalized_shape|"
    r"index out of range|out of bounds|broadcast|Expected .* (batch|input)|to have \d+",
    re.I,
)

_CONV = re.compile(r"^(Lazy)?Conv(Transpose)?([123])d$")
_NORM_CHANNELS = re.compile(r"^(BatchNorm|InstanceNorm)([123])d$")


@hookimpl
def trainlens_diagnose(records: Records, catalogue: Catalogue) -> list[Finding]:
    findings = []
    crash = _crash_finding(records, catalogue)
    if crash is not None:
        findings.append(crash)
    findings.extend(_broadcast_findings(records, catalogue))
    findings.extend(_mixing_findings(records, catalogue))
    return findings


# --- crashes -------------------------------------------------------------------------
def _crash_finding(records: Records, catalogue: Catalogue) -> Finding | None:
    exc = exception_info(records)
    if not exc or exc.get("phase") not in ("forward", "loss") or is_oom(exc):
        return None
    message = f"{exc['type']}: {exc['message']}".strip()
    inputs = exc.get("inputs") or []
    if exc["phase"] == "loss":
        return _loss_crash(records, catalogue, exc, message, inputs)

    module = exc.get("module")
    attrs = module_attrs(records, module)
    check = expectation(exc.get("module_type") or "", attrs, inputs, exc.get("int_range"))
    if check is None and not _SHAPE_MESSAGE.search(message):
        return None  # not a shape problem; other rules may know it
    received = shape_str(inputs[0]) if inputs else "no tensor input"
    shown = _display(module)
    if check is not None:
        expected, suggestion = check
        evidence = f"`{shown}` ({exc['module_type']}) {expected}, but received {received}"
        confidence = 0.95
    else:
        expected = f"it raised `{message[:200]}`"
        suggestion = (
            f"Compare the shape reaching `{shown}` with what it was built for, and fix the "
            "layer's size or the reshape before it."
        )
        evidence = f"`{shown}` ({exc['module_type']}) raised on input {received}: {message[:200]}"
        confidence = 0.7
    cause = catalogue.cause(
        SYMPTOM,
        "layer_input_mismatch",
        confidence=confidence,
        evidence=evidence,
        module=module,
        step=exc.get("step"),
        received=received,
        expected=expected,
        suggestion=suggestion,
    )
    return catalogue.finding(
        SYMPTOM,
        "error",
        [cause],
        evidence={
            "exception": message[:500],
            "module_type": exc.get("module_type"),
            "received": inputs,
            "received_dtypes": exc.get("dtypes"),
            "expected": expected,
            "module_config": attrs,
            "path": [_display(p) for p in exc.get("path", [])],
            "trail": _trail(records, exc),
        },
    )


def expectation(
    module_type: str,
    attrs: dict[str, Any],
    inputs: list[list[int]],
    int_range: list[int] | None = None,
) -> tuple[str, str] | None:
    """(what the layer expects, what to change) when the input contradicts its config."""
    if not inputs:
        return None
    x = inputs[0]
    conv = _CONV.match(module_type)
    norm = _NORM_CHANNELS.match(module_type)
    if module_type in ("Linear", "LazyLinear", "NonDynamicallyQuantizableLinear"):
        want = attrs.get("in_features")
        if want is not None and (not x or x[-1] != want):
            got = x[-1] if x else None
            return (
                f"expects the last dimension to be in_features={want}",
                f"Make the layer fit the data: `nn.Linear({got}, {attrs.get('out_features')})` "
                f"(or `nn.LazyLinear({attrs.get('out_features')})`), or fix the flatten/reshape "
                f"before it so the last dimension is {want}.",
            )
    elif conv:
        n = int(conv.group(3))
        want = attrs.get("in_channels")
        if want is None:
            return None
        if len(x) not in (n + 1, n + 2):
            return (
                f"expects a {n + 2}-d input [batch, channels={want}, {n}-d spatial] "
                f"(got {len(x)} dimensions)",
                "Add or remove the missing dimension before the convolution, e.g. "
                "`x.unsqueeze(1)` for a missing channel axis, or `x.permute(0, 3, 1, 2)` "
                "for channels-last images.",
            )
        got = x[-(n + 1)]
        if got != want:
            hint = (
                " The input looks channels-last: use `x.permute(0, 3, 1, 2)`."
                if n == 2 and len(x) == 4 and x[-1] == want
                else ""
            )
            return (
                f"expects in_channels={want} at dimension {len(x) - n - 1}",
                f"Set in_channels={got} on this layer, or fix the layer before it so it "
                f"produces {want} channels.{hint}",
            )
    elif norm:
        want = attrs.get("num_features")
        if want is not None and len(x) >= 2 and x[1] != want:
            return (
                f"expects num_features={want} channels at dimension 1",
                f"Use `nn.{module_type}({x[1]})`, or check that dimension 1 holds the "
                "channels/features (sequence models often need `x.transpose(1, 2)`).",
            )
    elif module_type == "GroupNorm":
        want = attrs.get("num_channels")
        if want is not None and len(x) >= 2 and x[1] != want:
            return (
                f"expects num_channels={want} at dimension 1",
                f"Use `nn.GroupNorm(num_groups, {x[1]})`.",
            )
    elif module_type == "LayerNorm":
        want = list(attrs.get("normalized_shape") or [])
        if want and x[-len(want) :] != want:
            return (
                f"expects the last dimensions to be normalized_shape={want}",
                f"Use `nn.LayerNorm({x[-1]})` or make the features dimension {want[-1]}.",
            )
    elif module_type in ("Embedding", "EmbeddingBag"):
        want = attrs.get("num_embeddings")
        if (
            int_range is not None
            and want is not None
            and not 0 <= int_range[0] <= int_range[1] < want
        ):
            return (
                f"has num_embeddings={want}, so ids must lie in [0, {want - 1}]; the ids "
                f"ranged over [{int_range[0]}, {int_range[1]}]",
                f"Build the embedding with num_embeddings >= {int_range[1] + 1} (vocabulary "
                "size plus special tokens), or fix the tokenizer/ids that exceed it.",
            )
    elif module_type in ("RNN", "LSTM", "GRU"):
        want = attrs.get("input_size")
        if want is not None and (len(x) not in (2, 3) or x[-1] != want):
            return (
                f"expects [batch, seq, input_size={want}] (batch_first="
                f"{attrs.get('batch_first')}) or an unbatched [seq, {want}]",
                f"Use input_size={x[-1]} or reshape the input so its last dimension is {want}.",
            )
    elif module_type == "MultiheadAttention":
        want = attrs.get("embed_dim")
        if want is not None and x and x[-1] != want:
            return (
                f"expects embed_dim={want} in the last dimension",
                f"Project the input to {want} features first or build the attention with "
                f"embed_dim={x[-1]}.",
            )
    return None


def _loss_crash(
    records: Records,
    catalogue: Catalogue,
    exc: dict[str, Any],
    message: str,
    inputs: list[list[int]],
) -> Finding | None:
    if len(inputs) < 2:
        return None
    loss = exc.get("module_type") or "the loss"
    pred, target = inputs[0], inputs[1]
    if pred == target and not _SHAPE_MESSAGE.search(message):
        return None
    cause = catalogue.cause(
        SYMPTOM,
        "loss_target_shape_mismatch",
        confidence=0.95,
        evidence=f"{loss} raised on input {shape_str(pred)} and target {shape_str(target)}: "
        f"{message[:200]}",
        module=_model_module(records, exc.get("module")),
        step=exc.get("step"),
        loss=loss,
        input_shape=shape_str(pred),
        target_shape=shape_str(target),
        suggestion=loss_fix(loss, pred, target),
    )
    return catalogue.finding(
        SYMPTOM,
        "error",
        [cause],
        evidence={
            "loss": loss,
            "input": pred,
            "target": target,
            "dtypes": exc.get("dtypes"),
            "exception": message[:500],
        },
    )


def loss_fix(loss: str, pred: list[int], target: list[int]) -> str:
    """What to change, for the two usual families of losses."""
    if loss in ("CrossEntropyLoss", "NLLLoss"):
        return (
            f"{loss} wants logits [N, C] and class indices [N] (dtype long), or class "
            "probabilities of the same shape as the logits. Squeeze a [N, 1] target with "
            "`target.squeeze(1)`; for sequences, flatten to `logits.view(-1, C)` and "
            "`target.view(-1)`."
        )
    if len(pred) == len(target) + 1 and pred[-1] == 1:
        return "Squeeze the model output, `output.squeeze(-1)`, so it matches the target."
    if len(target) == len(pred) + 1 and target[-1] == 1:
        return "Squeeze the target, `target.squeeze(-1)`, so it matches the output."
    return "Reshape output or target so both have exactly the same shape before the loss."


# --- silent broadcasting -----------------------------------------------------------------
def _broadcast_findings(records: Records, catalogue: Catalogue) -> list[Finding]:
    events = records.events
    events = events[events["kind"] == "loss_broadcast"]
    threshold = catalogue.threshold(SYMPTOM, "broadcast_inflation")
    findings = []
    for _, row in events.iterrows():
        data = json.loads(row["data"])
        if data["inflation"] <= threshold:
            continue
        pred, target = data["input"], data["target"]
        evidence = (
            f"{data['loss']} got input {shape_str(pred)} and target {shape_str(target)} "
            f"at step {int(row['step'])} ({data['split']}): they broadcast to "
            f"{shape_str(data['broadcast'])}, so every output is compared with every target "
            "and the loss is wrong while training goes on"
        )
        cause = catalogue.cause(
            SYMPTOM,
            "loss_target_shape_mismatch",
            confidence=0.9,
            evidence=evidence,
            module=_model_module(records, row["module"]),
            step=int(row["step"]),
            loss=data["loss"],
            input_shape=shape_str(pred),
            target_shape=shape_str(target),
            suggestion=loss_fix(data["loss"], pred, target),
        )
        findings.append(
            catalogue.finding(SYMPTOM, "error", [cause], evidence={"silent_broadcast": data})
        )
    return findings


def _display(name: str | None) -> str:
    return "(model)" if name == "" else str(name)


def _trail(records: Records, exc: dict[str, Any]) -> list[dict[str, Any]]:
    """The last shapes seen on the way to the failing module, in call order."""
    shapes = records.shapes
    call = exc.get("call")
    if shapes.empty or call is None:
        return []
    latest = shapes.sort_values("step").groupby("module", sort=False).tail(1)
    before = latest[latest["call"].notna() & (latest["call"] < call)].sort_values("call")
    return [
        {
            "module": _display(r["module"]),
            "type": r["type"],
            "inputs": json.loads(r["inputs"]),
            "outputs": json.loads(r["outputs"]),
        }
        for _, r in before.tail(6).iterrows()
    ]


# --- samples mixing across the batch ---------------------------------------------------
# layers that mix samples on purpose even in eval mode (BatchNorm without running stats)
_MIXES_ON_PURPOSE = re.compile(r"^(Sync)?BatchNorm|^LazyBatchNorm")


def _data_axes(dep: dict[str, Any], module: str | None) -> str:
    """Both axes, named, when the data (not the model's declared layout) fixed the batch."""
    data = dep.get("data_evidence")
    if dep.get("batch_axis_from") != "data" or not data:
        return ""
    a, t = dep["batch_axis"], data.get("time_axis")
    shape = data.get("ids") or dep["input"]
    text = f": the data holds its {dep['batch']} samples along axis {a} of {shape_str(shape)}"
    if t is not None:
        text += (
            f" ({data['from']}: the target is the input shifted by one along axis {t} in "
            f"{data['match']:.0%} of positions, so axis {t} is time)"
        )
    return text + f", and `{_display(module)}` runs its recurrence or attention along axis {a}"


def _mixing_findings(records: Records, catalogue: Catalogue) -> list[Finding]:
    dep = records.meta.get("batch_dependency") or {}
    if not dep.get("mixed"):
        return []
    module = dep.get("module")
    module_type = dep.get("module_type") or ""
    if _MIXES_ON_PURPOSE.match(module_type):
        return []
    leak = float(dep["max_leak"])
    if leak <= catalogue.threshold(SYMPTOM, "mixing_leak", "batch_dim_mixing"):
        return []
    i, j = dep["sample"], dep["other"]
    leaf = dep.get("leaf", "input")
    evidence = (
        f"output of sample {i} has gradient {dep['grad_other']:.3g} w.r.t. sample {j}'s "
        f"{'input' if leaf == 'input' else leaf.replace('output of', 'activation in')} "
        f"(its own: {dep['grad_own']:.3g}); {dep['mixed_samples']} of "
        f"{dep['batch']} samples leak into the outputs probed, in eval mode"
    )
    if dep.get("batch_axis_from") == "data":
        evidence += f" (along axis {dep['batch_axis']}, the data's batch axis)"
    attrs = module_attrs(records, module)
    if dep.get("starts") == "between":
        where = (
            f"the input of `{dep['first_mixed']}` already mixes samples, while "
            + (f"the output of `{dep['last_clean']}`" if dep.get("last_clean") else "the input")
            + f" does not: the reshape is in the forward of `{_display(module)}`, between them"
        )
        suggestion = (
            "A `view`/`reshape` that swaps axes scrambles samples: use "
            "`x.permute(...)` or `x.transpose(0, 1)` to reorder axes, and keep `view` for "
            "splitting or merging neighbouring axes."
        )
    else:
        where = f"`{_display(module)}` ({module_type}) gets per-sample inputs and mixes them"
        where += _data_axes(dep, module)
        if "batch_first" in attrs:
            suggestion = (
                f"`{_display(module)}` has batch_first={attrs['batch_first']} but is fed "
                f"{'[seq, batch, ...]' if attrs['batch_first'] else '[batch, seq, ...]'}: "
                f"build it with batch_first={not attrs['batch_first']} or transpose its input."
            )
        else:
            suggestion = (
                f"Check the axes `{_display(module)}` reduces or attends over: one of them is "
                "the batch axis (e.g. a softmax, mean or attention over dim 0)."
            )
    cause = catalogue.cause(
        SYMPTOM,
        "batch_dim_mixing",
        confidence=0.9,
        evidence=evidence,
        module=module if module in records.meta.get("modules", {}) else None,
        step=0,
        where=where,
        suggestion=suggestion,
    )
    return [catalogue.finding(SYMPTOM, "error", [cause], evidence={"batch_dependency": dep})]
