"""shape_mismatch: a layer or loss crashed on a shape (or on a dtype, or on class targets
outside the model's classes), or a loss silently broadcast.

Batch mixing comes from the batch-dependency check (`meta["batch_dependency"]`, see
`_probes/_batch_dependency.py`): the gradient of one sample's output w.r.t. the other samples'
inputs, and the first module on the way whose tensors mix samples.

Evidence comes from the failure record (`meta["exception"]`: the innermost module whose
forward raised, the shapes it received) compared with that module's own configuration
(`in_features`, `in_channels`, ...), and from `loss_broadcast` events.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from .._catalogue import Catalogue
from .._finding import Finding
from .._hookspecs import hookimpl
from .._records import Records
from ._common import exception_info, is_oom, module_attrs, num, shape_str
from ._common import model_module as _model_module

SYMPTOM = "shape_mismatch"
#: the causes this rule decides (checked by tests/test_catalogue.py)
CAUSES = frozenset(
    {
        "layer_input_mismatch",
        "loss_target_shape_mismatch",
        "batch_dim_mixing",
        "dtype_mismatch",
        "target_out_of_range",
    }
)

# Messages torch raises for shape problems, for layers whose expectations we do not model.
_SHAPE_MESSAGE = re.compile(
    r"shape|size|dimension|mat1 and mat2|must match|channels|normalized_shape|"
    r"index out of range|out of bounds|broadcast|Expected .* (batch|input)|to have \d+",
    re.I,
)

# Messages torch raises when a tensor's dtype does not fit (CPU and CUDA wordings). A
# device mismatch ("Input type (torch.cuda.FloatTensor) and weight type ...", MPS's
# "Input type (MPSFloatType) ...") is not one.
_DTYPE_MESSAGE = re.compile(
    r"dtype|datatype|scalar type|\bInput type \(|can't be cast to the desired output type|"
    r"not implemented for '",
    re.I,
)
_DEVICE_MESSAGE = re.compile(r"device|cuda|mps|xpu|hip", re.I)
# a class target outside [0, C) (CPU message; CUDA's device-side assert)
_TARGET_RANGE = re.compile(r"Target -?\d+ is out of bounds|t >= 0 && t < n_classes")
#: a class-weighted loss (`CrossEntropyLoss(weight=w)`, `NLLLoss`) whose `w` is not one
#: weight per class: the input and target shapes are fine, the weights are not
_CLASS_WEIGHTS = re.compile(
    r"weight tensor should be defined either for all (\d+) classes or no classes but got "
    r"weight tensor of shape: \[(\d+)\]"
)
_INTEGER = ("int64", "int32", "int16", "int8", "uint8", "bool")
_INDEX_LOSSES = ("CrossEntropyLoss", "NLLLoss")

_CONV = re.compile(r"^(Lazy)?Conv(Transpose)?([123])d$")
_NORM_CHANNELS = re.compile(r"^(BatchNorm|InstanceNorm)([123])d$")


@hookimpl
def trainlens_diagnose(records: Records, catalogue: Catalogue) -> list[Finding]:
    findings = []
    crash = _crash_finding(records, catalogue)
    if crash is not None:
        findings.append(crash)
    broadcast = _broadcast_findings(records, catalogue)
    findings.extend(broadcast or _hand_written_broadcast(records, catalogue))
    mixing = _mixing_findings(records, catalogue)
    findings.extend(mixing or _loss_over_batch(records, catalogue))
    return findings


# --- crashes -------------------------------------------------------------------------
def _crash_finding(records: Records, catalogue: Catalogue) -> Finding | None:
    exc = exception_info(records)
    if not exc or exc.get("phase") not in ("forward", "loss") or is_oom(exc):
        return None
    message = f"{exc['type']}: {exc['message']}".strip()
    inputs = exc.get("inputs") or []
    if _DTYPE_MESSAGE.search(message) and not _DEVICE_MESSAGE.search(message):
        return _dtype_crash(records, catalogue, exc, message)
    if exc["phase"] == "loss":
        if _TARGET_RANGE.search(message) and len(inputs) >= 2:
            return _target_range_crash(records, catalogue, exc, message, inputs)
        weights = _CLASS_WEIGHTS.search(message)
        if weights and len(inputs) >= 2:
            return _class_weights_crash(records, catalogue, exc, message, inputs, weights)
        return _loss_crash(records, catalogue, exc, message, inputs)

    module = exc.get("module")
    attrs = module_attrs(records, module)
    check = expectation(
        catalogue, exc.get("module_type") or "", attrs, inputs, exc.get("int_range"), message
    )
    if check is None and not _SHAPE_MESSAGE.search(message):
        return None  # not a shape problem; other rules may know it

    def text(key: str, **fields: Any) -> str:
        return catalogue.text(SYMPTOM, "layer_input_mismatch", key, **fields)

    received = shape_str(inputs[0]) if inputs else text("no_tensor_input")
    fields = dict(
        shown=_display(module),
        module_type=exc["module_type"],
        received=received,
        message=message[:200],
    )
    if check is not None:
        expected, suggestion = check
        evidence = text("expected_evidence", expected=expected, **fields)
        confidence = 0.95
    else:
        expected = text("raised_expected", **fields)
        suggestion = text("raised_suggestion", **fields)
        evidence = text("raised_evidence", **fields)
        confidence = 0.7
    return _crash(
        catalogue,
        "layer_input_mismatch",
        confidence=confidence,
        evidence=evidence,
        module=module,
        step=exc.get("step"),
        received=received,
        expected=expected,
        suggestion=suggestion,
        details={
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


#: an RNN's hidden state of the wrong shape: "Expected hidden[0] size (1, 4, 16), got
#: [1, 16, 16]" (LSTM) or "Expected hidden size (1, 4, 16), got [1, 16, 16]" (RNN, GRU)
_HIDDEN_SIZE = re.compile(r"Expected hidden(?:\[\d\])? size \(([\d, ]+)\), got \[([\d, ]+)\]")


def expectation(
    catalogue: Catalogue,
    module_type: str,
    attrs: dict[str, Any],
    inputs: list[list[int]],
    int_range: list[int] | None = None,
    message: str = "",
) -> tuple[str, str] | None:
    """(what the layer expects, what to change) when the input contradicts its config:
    the recipe's `<case>_expected` and `<case>_suggestion` texts, filled in."""
    if not inputs:
        return None

    def says(case: str, **fields: Any) -> tuple[str, str]:
        def text(key: str) -> str:
            return catalogue.text(SYMPTOM, "layer_input_mismatch", f"{case}_{key}", **fields)

        return text("expected"), text("suggestion")

    x = inputs[0]
    conv = _CONV.match(module_type)
    norm = _NORM_CHANNELS.match(module_type)
    if module_type in ("Linear", "LazyLinear", "NonDynamicallyQuantizableLinear"):
        want = attrs.get("in_features")
        if want is not None and (not x or x[-1] != want):
            got = x[-1] if x else None
            return says("linear", want=want, got=got, out=attrs.get("out_features"))
    elif conv:
        n = int(conv.group(3))
        want = attrs.get("in_channels")
        if want is None:
            return None
        if len(x) not in (n + 1, n + 2):
            return says("conv_dims", want=want, n=n, dims=n + 2, got_dims=len(x))
        got = x[-(n + 1)]
        if got != want:
            expected, suggestion = says("conv_channels", want=want, got=got, dim=len(x) - n - 1)
            if n == 2 and len(x) == 4 and x[-1] == want:
                hint = catalogue.text(SYMPTOM, "layer_input_mismatch", "channels_last_hint")
                suggestion = f"{suggestion} {hint}"
            return expected, suggestion
    elif norm:
        want = attrs.get("num_features")
        if want is not None and len(x) >= 2 and x[1] != want:
            return says("norm", want=want, got=x[1], module_type=module_type)
        if norm.group(1) == "BatchNorm" and len(x) >= 2 and math.prod([x[0], *x[2:]]) == 1:
            # one value per channel: a last batch of one sample, in training mode
            return says("batch_of_one")
    elif module_type == "GroupNorm":
        want = attrs.get("num_channels")
        if want is not None and len(x) >= 2 and x[1] != want:
            return says("group_norm", want=want, got=x[1])
    elif module_type == "LayerNorm":
        want = list(attrs.get("normalized_shape") or [])
        if want and x[-len(want) :] != want:
            return says("layer_norm", want=want, got=x[-1], want_last=want[-1])
    elif module_type in ("Embedding", "EmbeddingBag"):
        want = attrs.get("num_embeddings")
        if (
            int_range is not None
            and want is not None
            and not 0 <= int_range[0] <= int_range[1] < want
        ):
            return says(
                "embedding",
                want=want,
                max_id=want - 1,
                low=int_range[0],
                high=int_range[1],
                need=int_range[1] + 1,
            )
    elif module_type in ("RNN", "LSTM", "GRU"):
        want = attrs.get("input_size")
        if want is not None and (len(x) not in (2, 3) or x[-1] != want):
            return says("rnn", want=want, got=x[-1], batch_first=attrs.get("batch_first"))
        hidden = _HIDDEN_SIZE.search(message)
        if hidden is not None and len(x) == 3:
            expected = [int(v) for v in re.findall(r"\d+", hidden.group(1))]
            got = [int(v) for v in re.findall(r"\d+", hidden.group(2))]
            if len(expected) == len(got) == 3 and expected[1] != got[1]:
                # the state was built for another batch size: a smaller last batch
                return says(
                    "rnn_hidden_batch",
                    batch=expected[1],
                    built=got[1],
                    dim="0" if attrs.get("batch_first") else "1",
                )
    elif module_type == "MultiheadAttention":
        want = attrs.get("embed_dim")
        if want is not None and x and x[-1] != want:
            return says("attention", want=want, got=x[-1])
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
    loss = exc.get("module_type") or _loss_text(catalogue, "the_loss")
    pred, target = inputs[0], inputs[1]
    if pred == target and not _SHAPE_MESSAGE.search(message):
        return None
    fields = dict(loss=loss, input_shape=shape_str(pred), target_shape=shape_str(target))
    evidence = _loss_text(catalogue, "raised", message=message[:200], **fields)
    module = _model_module(records, exc.get("module"))
    suggestion = loss_fix(catalogue, loss, pred, target)
    changed = _rows_changed(records, exc.get("step"), pred, target)
    if changed is not None:
        evidence = evidence.rstrip(". ") + _loss_text(catalogue, "batch_changed", **changed)
        suggestion = _loss_text(catalogue, "fix_batch_changed", **changed)
        module = changed["module"]
    return _crash(
        catalogue,
        "loss_target_shape_mismatch",
        confidence=0.95,
        evidence=evidence,
        module=module,
        step=exc.get("step"),
        suggestion=suggestion,
        **fields,
        details={
            "loss": loss,
            "input": pred,
            "target": target,
            "dtypes": exc.get("dtypes"),
            "exception": message[:500],
        },
    )


def _class_weights_crash(
    records: Records,
    catalogue: Catalogue,
    exc: dict[str, Any],
    message: str,
    inputs: list[list[int]],
    weights: re.Match[str],
) -> Finding:
    """The loss's class weights are not one per class: said about the weights, since the
    input and target shapes that reached it are right."""
    loss = exc.get("module_type") or _loss_text(catalogue, "the_loss")
    classes, got = int(weights.group(1)), int(weights.group(2))
    fields = dict(
        loss=loss,
        input_shape=shape_str(inputs[0]),
        target_shape=shape_str(inputs[1]),
        classes=classes,
        weights=got,
        message=message[:200],
    )
    text = lambda key: _loss_text(catalogue, key, **fields)  # noqa: E731
    found = catalogue.cause(
        SYMPTOM,
        "loss_target_shape_mismatch",
        confidence=0.95,
        evidence=text("class_weights_evidence"),
        module=_model_module(records, exc.get("module")),
        step=exc.get("step"),
        suggestion=text("class_weights_fix"),
        **{k: v for k, v in fields.items() if k != "message"},
    )
    found = dataclasses.replace(
        found, first_check=text("class_weights_check"), fix_attempt=text("class_weights_fix")
    )
    details = {"loss": loss, "input": inputs[0], "target": inputs[1], "classes": classes,
               "class_weights": got, "exception": message[:500]}  # fmt: skip
    return catalogue.finding(SYMPTOM, "error", [found], evidence=details)


def _rows_changed(
    records: Records, step: Any, pred: list[int], target: list[int]
) -> dict[str, Any] | None:
    """Where the model turned its batch into another number of rows: the loss got more (or
    fewer) rows than targets, the targets match the model's input batch, and the shape
    trace shows the first module fed another row count than the module before it gave."""
    if not pred or not target or pred[0] == target[0]:
        return None
    shapes = records.shapes
    if shapes.empty or step is None:
        return None
    # each module's latest signature (a signature is recorded the first time it is seen)
    rows = shapes[(shapes["step"] <= int(step)) & (shapes["split"] == "train")]
    rows = rows.sort_values("step", kind="stable").groupby("module").tail(1).sort_values("call")
    root = rows[rows["module"] == ""]
    if root.empty:
        return None
    ins, outs = json.loads(root.iloc[0]["inputs"]), json.loads(root.iloc[0]["outputs"])
    if not ins or not outs or not ins[0] or not outs[0]:
        return None
    batch = ins[0][0]
    if batch != target[0] or outs[0][0] != pred[0]:
        return None
    before = None
    for _, row in rows[rows["module"] != ""].iterrows():
        got = json.loads(row["inputs"])
        if got and got[0] and got[0][0] not in (batch, pred[0]):
            return None  # a layout the trace cannot follow (time-major, packed)
        if got and got[0] and got[0][0] == pred[0] and before is not None:
            per_sample = math.prod(before[1][1:]) if len(before[1]) > 1 else 1
            return dict(
                batch=batch,
                rows=pred[0],
                model_input=shape_str(ins[0]),
                model_output=shape_str(outs[0]),
                module=str(row["module"]),
                shown=_display(str(row["module"])),
                received=shape_str(got[0]),
                before=_display(before[0]),
                before_shape=shape_str(before[1]),
                per_sample=per_sample,
            )
        out = json.loads(row["outputs"])
        if out and out[0] and out[0][0] == batch:
            before = (str(row["module"]), out[0])
    return None


def _dtype_crash(
    records: Records, catalogue: Catalogue, exc: dict[str, Any], message: str
) -> Finding:
    """A layer or loss raised on a dtype: the tensor is right in shape, wrong in kind."""
    dtypes = [str(d) for d in exc.get("dtypes") or []]

    def text(key: str, **fields: Any) -> str:
        return catalogue.text(SYMPTOM, "dtype_mismatch", key, **fields)

    module = exc.get("module")
    module_type = exc.get("module_type") or ""
    if exc["phase"] == "loss":
        loss = module_type or _loss_text(catalogue, "the_loss")
        got, target = [*dtypes, "?", "?"][:2]
        indices = loss in _INDEX_LOSSES
        fields = dict(where=loss, received=text("loss_received", input=got, target=target))
        expected = text("expected_indices" if indices else "expected_float_target", loss=loss)
        suggestion = text("suggest_long_target" if indices else "suggest_float_target")
        evidence = text("loss_evidence", loss=loss, input=got, target=target, message=message)
        module = _model_module(records, module)
    else:
        got = dtypes[0] if dtypes else "?"
        weights = _param_dtype(records, module)
        fields = dict(where=f"`{_display(module)}`", received=got)
        expected = text("expected_weights", weights=weights) if weights else text("expected")
        if module_type == "Embedding" or module_type == "EmbeddingBag":
            suggestion = text("suggest_ids")
        elif got == "float64":
            suggestion = text("suggest_float64")
        elif got in _INTEGER:
            suggestion = text("suggest_integer")
        else:
            suggestion = text("suggest_cast", weights=weights or "float32")
        evidence = text(
            "layer_evidence",
            shown=_display(module),
            module_type=module_type,
            received=got,
            weights=weights or "?",
            message=message[:200],
        )
    return _crash(
        catalogue,
        "dtype_mismatch",
        confidence=0.95,
        evidence=evidence,
        module=module,
        step=exc.get("step"),
        expected=expected,
        suggestion=suggestion,
        **fields,
        details={
            "exception": message[:500],
            "module_type": module_type,
            "received": exc.get("inputs") or [],
            "received_dtypes": dtypes,
        },
    )


def _crash(
    catalogue: Catalogue, cause_id: str, *, details: dict[str, Any], **cause: Any
) -> Finding:
    """The error finding of a crash: one cause, the failure's details as its evidence."""
    found = catalogue.cause(SYMPTOM, cause_id, **cause)
    return catalogue.finding(SYMPTOM, "error", [found], evidence=details)


def _param_dtype(records: Records, module: str | None) -> str | None:
    """The dtype of a module's own parameters (its weight), from the run's meta."""
    if module is None:
        return None
    for name, info in records.meta.get("params", {}).items():
        if name.rpartition(".")[0] == module and info.get("dtype"):
            return str(info["dtype"])
    return None


#: the label segmentation masks use for pixels to leave out (VOC, Cityscapes, ADE20K)
_VOID_LABEL = 255


def _target_range_crash(
    records: Records,
    catalogue: Catalogue,
    exc: dict[str, Any],
    message: str,
    inputs: list[list[int]],
) -> Finding:
    """Class targets outside the [0, C) the model's output has room for."""
    loss = exc.get("module_type") or _loss_text(catalogue, "the_loss")
    pred = inputs[0]
    classes = int(pred[1] if len(pred) >= 2 else pred[0]) if pred else 0
    low, high = exc.get("int_range") or [None, None]

    def text(key: str, **fields: Any) -> str:
        return catalogue.text(SYMPTOM, "target_out_of_range", key, **fields)

    if low is None or high is None:
        seen, case = text("unknown_range"), "fix_check"
    else:
        seen = text("range", low=low, high=high)
        if low >= 1 and high == classes:
            case = "fix_one_based"
        elif low < 0:
            case = "fix_negative"
        elif high == _VOID_LABEL and classes < _VOID_LABEL:
            case = "fix_void_label"
        else:
            case = "fix_more_classes"
    fields = dict(loss=loss, classes=classes, last=classes - 1, seen=seen)
    return _crash(
        catalogue,
        "target_out_of_range",
        confidence=0.95,
        evidence=text("evidence", message=message[:200], **fields),
        module=_model_module(records, exc.get("module")),
        step=exc.get("step"),
        suggestion=text(case, need=(high or 0) + 1, low=low, **fields),
        **fields,
        details={
            "loss": loss,
            "input": pred,
            "classes": classes,
            "target_range": exc.get("int_range"),
            "exception": message[:500],
        },
    )


def loss_fix(catalogue: Catalogue, loss: str, pred: list[int], target: list[int]) -> str:
    """What to change, for the two usual families of losses."""
    if loss in ("CrossEntropyLoss", "NLLLoss"):
        return _loss_text(catalogue, "fix_class_indices", loss=loss)
    if len(pred) == len(target) + 1 and pred[-1] == 1:
        return _loss_text(catalogue, "fix_squeeze_output")
    if len(target) == len(pred) + 1 and target[-1] == 1:
        return _loss_text(catalogue, "fix_squeeze_target")
    return _loss_text(catalogue, "fix_reshape")


def _loss_text(catalogue: Catalogue, key: str, **fields: Any) -> str:
    return catalogue.text(SYMPTOM, "loss_target_shape_mismatch", key, **fields)


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
        fields = dict(
            loss=data["loss"], input_shape=shape_str(pred), target_shape=shape_str(target)
        )
        evidence = _loss_text(
            catalogue,
            "broadcast",
            step=int(row["step"]),
            split=data["split"],
            broadcast=shape_str(data["broadcast"]),
            **fields,
        )
        cause = catalogue.cause(
            SYMPTOM,
            "loss_target_shape_mismatch",
            confidence=0.9,
            evidence=evidence,
            module=_model_module(records, row["module"]),
            step=int(row["step"]),
            suggestion=loss_fix(catalogue, data["loss"], pred, target),
            **fields,
        )
        findings.append(
            catalogue.finding(SYMPTOM, "error", [cause], evidence={"silent_broadcast": data})
        )
    return findings


def _hand_written_broadcast(records: Records, catalogue: Catalogue) -> list[Finding]:
    """A loss written by hand (read from the root of its `backward()`) that reduced an
    `[N, N]` tensor made by a binary op with a constant operand, while the model's output
    was `[N, 1]` or `[N]`: `(pred - y) ** 2` with `pred` `[N, 1]` and `y` `[N]` compares
    every output with every target. A pairwise loss (`s - s.T`) has no constant operand."""
    roots = records.meta.get("backward_roots") or []
    shapes = records.shapes
    if not roots or shapes.empty:
        return []
    root_rows = shapes[(shapes["module"] == "") & (shapes["split"] == "train")]
    if root_rows.empty:
        return []
    outputs = json.loads(root_rows["outputs"].iloc[0])
    # a nested tensor's ragged dim is recorded by name ("j2"): no [N, 1] output there
    if not outputs or not outputs[0] or not all(type(v) is int for v in outputs[0]):
        return []
    out = list(outputs[0])
    n = out[0]
    hits = [
        r
        for r in roots
        if r.get("constant_operand")
        and r.get("reduced_shape") == [n, n]
        and n >= 2
        and math.prod(out) == n
    ]
    if len(hits) < len(roots):  # every root described must show it
        return []
    target = [n] if len(out) == 2 else [n, 1]  # what broadcast against the output
    fields = dict(
        loss=_loss_text(catalogue, "hand_written_loss"),
        input_shape=shape_str(out),
        target_shape=shape_str(target),
    )
    evidence = _loss_text(
        catalogue,
        "hand_written_broadcast",
        step=int(hits[0]["step"]),
        reduced=shape_str([n, n]),
        op=str(hits[0]["constant_operand"]).removesuffix("Backward0").lower(),
        **fields,
    )
    cause = catalogue.cause(
        SYMPTOM,
        "loss_target_shape_mismatch",
        confidence=0.85,
        evidence=evidence,
        step=int(hits[0]["step"]),
        suggestion=_loss_text(catalogue, "fix_squeeze_output" if len(out) == 2 else "fix_reshape"),
        **fields,
    )
    cause = dataclasses.replace(
        cause, first_check=_loss_text(catalogue, "hand_written_check", **fields)
    )
    return [catalogue.finding(SYMPTOM, "error", [cause], evidence={"backward_roots": roots})]


def _display(name: str | None) -> str:
    return "(model)" if name == "" else str(name)


def _trail(records: Records, exc: dict[str, Any]) -> list[dict[str, Any]]:
    """The last shapes seen on the way to the failing module, in call order."""
    shapes = records.shapes
    if shapes.empty:
        return []
    latest = shapes.sort_values("step").groupby("module", sort=False).tail(1)
    call = exc.get("call")
    if call is None:
        # placed from the traceback (a call the dispatch let run without hooks): where the
        # module came in the last call that recorded its shapes
        mine = latest[(latest["module"] == exc.get("module")) & latest["call"].notna()]
        if mine.empty:
            return []
        call = mine["call"].iloc[-1]
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
# layers whose job is to mix along an axis: fed the batch there, the error is theirs
_SEQUENCE_MIXERS = re.compile(r"RNN|LSTM|GRU|Attention|Attn|Transformer", re.I)
#: how the batch-dependency probe names an activation it probed: `output of `<module>``
_PROBED_OUTPUT = "output of "


def _data_axes(catalogue: Catalogue, dep: dict[str, Any], module: str | None) -> str:
    """Both axes, named, when the data (not the model's declared layout) fixed the batch."""
    data = dep.get("data_evidence")
    if dep.get("batch_axis_from") != "data" or not data:
        return ""
    t = data.get("time_axis")
    return catalogue.text(
        SYMPTOM,
        "batch_dim_mixing",
        "data_axes" if t is None else "data_axes_time",
        batch=dep["batch"],
        axis=dep["batch_axis"],
        shape=shape_str(data.get("ids") or dep["input"]),
        source=data.get("from"),
        time=t,
        match=f"{data['match']:.0%}" if t is not None else "",
        shown=_display(module),
    )


def _loss_over_batch(records: Records, catalogue: Catalogue) -> list[Finding]:
    """A classification loss whose `[N, C]` input is normalised over the batch, not over
    the classes: each column (one class across the N samples) sums to 1 or has a
    logsumexp of 0, and the rows do not. The (log-)softmax ran over dim=0 outside the
    model (the model's own outputs keep samples apart), so each sample's loss depends on
    the others'."""
    li = records.loss_inputs
    if li.empty or "logprob_dev_batch" not in li.columns:
        return []
    li = li[(li["split"] == "train") & li["logprob_dev_batch"].notna()]
    if li.empty:
        return []
    tol = catalogue.threshold(SYMPTOM, "batch_tolerance", "batch_dim_mixing")
    by_batch = (li["prob_dev_batch"] <= tol) | (li["logprob_dev_batch"] <= tol)
    by_class = (li["prob_dev"] <= tol) | (li["logprob_dev"] <= tol)
    hit = li[by_batch & ~by_class]
    if len(hit) < catalogue.threshold(SYMPTOM, "batch_share", "batch_dim_mixing") * len(li):
        return []
    logs = bool((hit["logprob_dev_batch"] <= tol).mean() >= 0.5)
    fields = dict(
        loss=str(hit["loss"].mode().iloc[0]),
        rows=len(hit),
        sampled=len(li),
        what=catalogue.text(SYMPTOM, "batch_dim_mixing", "loss_logsumexp" if logs else "loss_sums"),
        deviation=num(float(hit["logprob_dev_batch" if logs else "prob_dev_batch"].median())),
    )

    def text(key: str) -> str:
        return catalogue.text(SYMPTOM, "batch_dim_mixing", key, **fields)

    cause = catalogue.cause(
        SYMPTOM,
        "batch_dim_mixing",
        confidence=0.9,
        evidence=text("loss_evidence"),
        step=int(hit["step"].iloc[0]),
        where="",
        suggestion="",
    )
    cause = dataclasses.replace(cause, first_check=text("loss_check"), fix_attempt=text("loss_fix"))
    return [catalogue.finding(SYMPTOM, "error", [cause])]


def _pairwise_scores(dep: dict[str, Any]) -> bool:
    """The model's output is a score matrix over the batch: `[N, N]` or `[2N, 2N]` (CLIP's
    image-text logits, SimCLR's two views, in-batch negatives with one hard negative each),
    each row a sample compared with every sample: its rows depend on the other samples by
    design. A classifier whose class count happens to equal the batch would look the same:
    a miss there is the price of no false error on every contrastive model."""
    out, batch = dep.get("output"), dep.get("batch")
    if not isinstance(out, list) or len(out) != 2 or not isinstance(batch, int) or batch < 2:
        return False
    if dep.get("batch_axis", 0) != 0:
        return False
    rows, cols = out
    return rows in (batch, 2 * batch) and cols in (batch, 2 * batch)


def _mixing_findings(records: Records, catalogue: Catalogue) -> list[Finding]:
    dep = records.meta.get("batch_dependency") or {}
    if not dep.get("mixed"):
        return []
    module = dep.get("module")
    module_type = dep.get("module_type") or ""
    if _MIXES_ON_PURPOSE.match(module_type) or _pairwise_scores(dep):
        return []
    leak = float(dep["max_leak"])
    if leak <= catalogue.threshold(SYMPTOM, "mixing_leak", "batch_dim_mixing"):
        return []

    def text(key: str, **fields: Any) -> str:
        return catalogue.text(SYMPTOM, "batch_dim_mixing", key, shown=_display(module), **fields)

    leaf = dep.get("leaf", "input")
    if leaf.startswith(_PROBED_OUTPUT):  # the probe's own words for an activation it probed
        leaf = text("leaf_activation", probed=leaf[len(_PROBED_OUTPUT) :])
    evidence = text(
        "leak",
        sample=dep["sample"],
        other=dep["other"],
        grad_other=f"{dep['grad_other']:.3g}",
        grad_own=f"{dep['grad_own']:.3g}",
        leaf=leaf,
        mixed=dep["mixed_samples"],
        batch=dep["batch"],
    )
    if dep.get("batch_axis_from") == "data":
        evidence = f"{evidence} {text('along_data_axis', axis=dep['batch_axis'])}"
    attrs = module_attrs(records, module)
    severity, confidence = "error", 0.9
    if _batch_statistics(records, catalogue, dep):
        severity, confidence = "warning", 0.5
        where = text("statistics_where", module_type=module_type, ratio=f"{leak:.2g}")
        suggestion = text("statistics_suggestion")
    elif dep.get("starts") == "between":
        clean = (
            text("clean_output", last_clean=dep["last_clean"])
            if dep.get("last_clean")
            else text("clean_input")
        )
        where = text("between_where", first_mixed=dep["first_mixed"], clean=clean)
        suggestion = text("between_suggestion")
    else:
        where = text(
            "module_where", module_type=module_type, data_axes=_data_axes(catalogue, dep, module)
        )
        fed = _first_input_shape(records, module)
        if "batch_first" in attrs and fed is not None and len(fed) == 2:
            # a 2-D input is one unbatched sequence to a recurrent layer: the batch became
            # its time axis, whatever batch_first says
            suggestion = text("unbatched_suggestion", shape=shape_str(fed), steps=fed[0])
        elif "batch_first" in attrs:
            batch_first = attrs["batch_first"]
            suggestion = text(
                "batch_first_suggestion",
                batch_first=batch_first,
                fed=text("seq_first" if batch_first else "batch_first"),
                flipped=not batch_first,
            )
        else:
            suggestion = text("axes_suggestion")
    cause = catalogue.cause(
        SYMPTOM,
        "batch_dim_mixing",
        confidence=confidence,
        evidence=evidence,
        module=module if module in records.meta.get("modules", {}) else None,
        step=0,
        where=where,
        suggestion=suggestion,
    )
    return [catalogue.finding(SYMPTOM, severity, [cause], evidence={"batch_dependency": dep})]


def _first_input_shape(records: Records, module: str | None) -> list[int] | None:
    """The shape of the first tensor `module` was called with, from the shape trace."""
    shapes = records.shapes
    if module is None or shapes.empty:
        return None
    rows = shapes[shapes["module"] == module]
    if rows.empty:
        return None
    try:
        first = json.loads(rows.iloc[0]["inputs"])
    except (TypeError, ValueError):
        return None
    return first[0] if first and isinstance(first[0], list) else None


def _batch_statistics(records: Records, catalogue: Catalogue, dep: dict[str, Any]) -> bool:
    """Mixing that starts inside a leaf layer of the user's own (no recurrence, no
    attention) and pulls every sample in by a small share: statistics over the batch (a
    hand-written BatchNorm or standardisation), a design choice to question, not a bug
    to assert; a misplaced reshape carries other samples whole."""
    module = dep.get("module")
    if dep.get("starts") != "inside" or not module:
        return False
    if _SEQUENCE_MIXERS.search(dep.get("module_type") or ""):
        return False
    if any(name.startswith(f"{module}.") for name in records.meta.get("modules", {})):
        return False
    limit = catalogue.threshold(SYMPTOM, "statistics_leak", "batch_dim_mixing")
    return dep.get("mixed_samples") == dep.get("batch") and float(dep["max_leak"]) <= limit
