"""`trainlens demo`: the bundled examples, run on built-in data, with their drills."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._resources import data_dir


class Example(NamedTuple):
    """A bundled example and the finding it is planted to show (None: a healthy run)."""

    filename: str
    what: str
    symptom: str | None = None
    cause: str | None = None


#: (example file, what it shows, expected symptom, expected top cause), in demo order.
#: A plain 2-tuple is an example with no expectation.
EXAMPLES = (
    ("linear_regression.py", "healthy: nn.Linear(1, 1) learns y = 2x"),
    ("shape_mismatch.py", "planted: a CNN whose classifier expects the wrong size",
     "shape_mismatch", "layer_input_mismatch"),
    ("lr_too_low.py", "planted: SGD with lr 1e-6, the loss never moves",
     "flat_loss", "lr_too_low"),
    ("flat_loss.py", "planted: a softmax before CrossEntropyLoss keeps the loss flat",
     "flat_loss", "softmax_before_loss"),
    ("diverging.py", "planted: SGD with lr too high, the loss explodes",
     "diverging", "lr_too_high"),
    ("non_finite.py", "planted: log(softmax(x)) hits log(0) = -inf",
     "non_finite", "numerical_instability"),
    ("overfitting.py", "planted: a wide MLP memorises 32 noisy samples",
     "overfitting", "overfitting"),
    ("oom.py", "planted: an upsampling layer whose output needs petabytes",
     "oom", "batch_too_large"),
    ("attention.py", "planted: attention logits without the 1/sqrt(d) scaling",
     "confusing_attention", "attention_saturated"),
)  # fmt: skip


def examples() -> list[Example]:
    return [Example(*e) for e in EXAMPLES]


def load_example(filename: str) -> ModuleType:
    path = data_dir("examples") / filename
    spec = importlib.util.spec_from_file_location(f"trainlens_example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shows_expected(example: Example, drill: dict[str, Any]) -> bool:
    """Does the drill show the example's planted symptom with its cause ranked first?"""
    if example.symptom is None:
        return drill["status"] == "healthy" and not drill["findings"]
    return any(
        f["symptom"] == example.symptom and (example.cause in (None, f["likely_cause"]))
        for f in drill["findings"]
    )


def run_example(example: Example, run_dir: Path) -> tuple[Any, float, str]:
    """Run one example quietly; returns (lens, seconds, what it printed)."""
    module = load_example(example.filename)
    out = io.StringIO()
    t0 = time.perf_counter()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(out),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # the planted bugs make torch warn; the drill explains
        lens = module.main(run_dir=str(run_dir))
    return lens, time.perf_counter() - t0, out.getvalue()


def run_demo(out: str | Path, console: Console | None = None) -> int:
    out = Path(out)
    console = console or Console(highlight=False)
    table = Table(title="trainlens demo", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("example", "status", "symptom", "likely cause"):
        table.add_column(col, overflow="fold")
    missed = []
    t_all = time.perf_counter()
    for example in examples():
        stem = Path(example.filename).stem
        lens, seconds, _ = run_example(example, out / stem)
        drill = lens.drill
        console.print(Text.assemble(("ran ", "bold"), f"{stem} ({seconds:.1f} s): {example.what}"))
        top = next((f for f in drill["findings"] if f["symptom"] == example.symptom), None)
        top = top or (drill["findings"][0] if drill["findings"] else None)
        symptom = Text(top["symptom"] if top else "-")
        cause = Text(top["likely_cause"] if top else "-")
        if not shows_expected(example, drill):
            missed.append(example)
            symptom.append(f" (expected {example.symptom or 'none'})", style="yellow")
            cause.append(f" (expected {example.cause or 'none'})", style="yellow")
        status = drill["status"]
        table.add_row(
            Text(stem),
            Text(status, style={"healthy": "green", "warning": "yellow"}.get(status, "red")),
            symptom,
            cause,
        )
    console.print(table)
    console.print(
        Text(
            f"{len(examples())} runs in {time.perf_counter() - t_all:.1f} s. Each has its run "
            f"directory {out}/<example>/ with drill.md (open it in any Markdown viewer), "
            "drill.html (any browser, pictures included), drill.json, curves.png and a "
            "README.md saying what each file is."
        )
    )
    if missed:
        names = ", ".join(Path(e.filename).stem for e in missed)
        console.print(
            Text(
                f"warning: {names} did not show the expected finding (is the rule for "
                "that symptom installed?)",
                style="yellow",
            )
        )
    failed = [e for e in examples() if e.symptom] or examples()
    example_dir = out / Path(failed[0].filename).stem
    console.print(Text(f"Read one in the terminal: trainlens report {example_dir}"))
    return 0
