"""`trainlens demo`: the bundled examples, run on built-in data, with their drills."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from rich.console import Console
from rich.table import Table

from ._resources import data_dir

#: (example file, what it shows), in the order the demo runs them
EXAMPLES = (
    ("linear_regression.py", "healthy: nn.Linear(1, 1) learns y = 2x"),
    ("shape_mismatch.py", "planted: a CNN whose classifier expects the wrong size"),
    ("flat_loss.py", "planted: a softmax before CrossEntropyLoss keeps the loss flat"),
)


def load_example(filename: str) -> ModuleType:
    path = data_dir("examples") / filename
    spec = importlib.util.spec_from_file_location(f"trainlens_example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_demo(out: str | Path) -> int:
    out = Path(out)
    console = Console(highlight=False)
    table = Table(title="trainlens demo", title_justify="left")
    for col in ("example", "status", "symptom", "likely cause", "drill"):
        table.add_column(col, overflow="fold")
    for filename, what in EXAMPLES:
        console.print(f"[bold]running[/] {filename}: {what}")
        example = load_example(filename)
        lens = example.main(run_dir=out / Path(filename).stem)
        drill = lens.drill
        top = drill["findings"][0] if drill["findings"] else None
        table.add_row(
            Path(filename).stem,
            f"[{'green' if drill['status'] == 'healthy' else 'red'}]{drill['status']}[/]",
            top["symptom"] if top else "-",
            top["likely_cause"] if top else "-",
            str(lens.run_dir / "drill.md"),
        )
    console.print(table)
    console.print("Open a drill.md above, or read the README for what each field means.")
    return 0
