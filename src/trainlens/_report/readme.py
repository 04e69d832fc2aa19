"""The run directory's own `README.md`: what each file is and how to open it.

Runs after every other artifact plugin (`trylast`), so it lists the files actually
there, pictures of other plugins included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._hookspecs import hookimpl
from .._io import atomic_write_text
from .._records import TABLES, Records

FILENAME = "README.md"

#: what a file is and how to open it; files not listed here are named as a plugin's
DESCRIPTIONS = {
    "drill.json": "the machine-readable failure drill (schema: trainlens's "
    "`drill.schema.json`); `trainlens report DIR --json` prints it",
    "drill.md": "the failure drill to read: per finding the six drill fields (`run_id`, "
    "`symptom`, `first_check`, `likely_cause`, `fix_attempt`, `result_after_fix`) and the "
    "ranked causes with evidence, then the shape trace and the per-layer table; any "
    "Markdown viewer, or `trainlens report DIR` in the terminal",
    "drill.html": "the whole drill on one page, pictures embedded: open it in a browser, "
    "attach it to a question or hand it in",
    "curves.png": "train and val loss against step (with the start level and the best "
    "constant prediction), gradient norm per layer, learning rate when it changes; any "
    "image viewer",
    "attention.png": "what attention did: Q/K/V and output shapes, one head's weights as a "
    "heat map, entropy per head over training; any image viewer",
    "checkpoint.pt": "the last good weights (see run.json `checkpoint` for the step and "
    "why): `model.load_state_dict(torch.load('checkpoint.pt'))`",
    "run.json": "run metadata: model layers and their settings, parameters, optimizer, "
    "the exception if any; any JSON viewer",
    FILENAME: "this file",
}
_TABLE_TEXT = {
    "steps": "one row per step: time, learning rate, backward passes, whether sampled",
    "losses": "every loss seen, train and val, per step",
    "params": "per parameter on sampled steps: gradient, parameter and update norms",
    "shapes": "the shape trace: input/output shapes and activation bytes of each module",
    "activations": "activation statistics of leaf modules on sampled steps (zero fraction, "
    "mean and max magnitude)",
    "inputs": "statistics of the model's input on sampled steps",
    "events": "one-off observations (a loss broadcasting its target, a skipped step, ...)",
    "attention": "attention entropy and max weight per layer, head and sampled step",
    "attention_layers": "Q/K/V/output shapes and settings of each attention layer",
    "attention_maps": "one head's attention weights for one sample, per layer",
    "loss_inputs": "what the losses were fed on sampled steps: classes, value range, "
    "whether already probabilities, the best constant prediction, the regression "
    "targets' scale",
    "grad_carry": "gradient left over from earlier steps when a backward pass begins",
    "memory": "memory in use per sampled step and the autograd graphs still alive",
    "nonfinite": "where NaN/Inf values were found: input, target, module outputs",
}


@hookimpl(trylast=True)
def trainlens_artifacts(run_dir: Path, drill: dict[str, Any], records: Records) -> list[str]:
    run_dir = Path(run_dir)
    names = {p.name for p in run_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    names |= {"drill.json", "drill.md", "drill.html", FILENAME}  # written after the artifacts
    atomic_write_text(run_dir / FILENAME, render_readme(drill, sorted(names)))
    return [FILENAME]


def render_readme(drill: dict[str, Any], names: list[str]) -> str:
    lines = [
        f"# trainlens run `{drill['run_id']}`",
        "",
        f"Status **{drill['status']}** after {drill['steps']} steps, "
        f"{_count(len(drill['findings']), 'finding')}. Start with `drill.md` (or "
        "`drill.html` in a browser), or run `trainlens report .` here.",
        "",
        "| file | what it is, how to open it |",
        "| --- | --- |",
    ]
    order = [n for n in DESCRIPTIONS if n in names] + [n for n in names if n not in DESCRIPTIONS]
    for name in order:
        stem, _, ext = name.rpartition(".")
        if name in DESCRIPTIONS:
            text = DESCRIPTIONS[name]
        elif ext == "parquet":
            what = _TABLE_TEXT.get(stem, "a table of records" if stem in TABLES else None)
            what = what or "records written by a plugin"
            text = f"{what}: `pandas.read_parquet('{name}')`"
        else:
            text = "written by a trainlens plugin"
        lines.append(f"| `{name}` | {text} |")
    lines += [
        "",
        "Read the whole run back in Python with `trainlens.load_run('.')` (`.drill`, "
        "`.findings`, `.records`). After fixing the problem and rerunning, "
        "`trainlens compare THIS_DIR FIXED_RUN_DIR` fills in `result_after_fix`.",
    ]
    return "\n".join(lines) + "\n"


def _count(n: int, word: str) -> str:
    return f"no {word}" if n == 0 else f"{n} {word}{'s' if n != 1 else ''}"
