"""Reading a finished run back from its directory.

Run directories travel (people send them to each other), so everything read here is
untrusted: the drill is checked against the shipped JSON Schema plus the fields the readers
use, the records against their declared columns and kinds. Whatever is wrong becomes one
`RunDirError` that names the file and the field, never a traceback further on.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ._drill import read_drill
from ._errors import RunDirError
from ._finding import Finding
from ._records import TABLES, Records

#: deeper JSON than this is not something trainlens wrote (its deepest is ~5 levels)
MAX_DEPTH = 64

#: record columns that hold text (names, kinds, JSON); every other declared column is a number
TEXT_COLUMNS = frozenset(
    {
        "module",
        "type",
        "split",
        "source",
        "param",
        "inputs",
        "outputs",
        "dtypes",
        "kind",
        "message",
        "data",
        "q_shape",
        "k_shape",
        "v_shape",
        "out_shape",
        "mask",
        "weights",
        "loss",
        "name",
    }
)


@dataclass
class Run:
    """A finished run: its drill (as in `drill.json`), findings and records."""

    run_dir: Path
    drill: dict[str, Any]
    records: Records

    @property
    def findings(self) -> list[Finding]:
        return [Finding.from_dict(f) for f in self.drill["findings"]]

    @property
    def run_id(self) -> str:
        return self.drill["run_id"]

    def _repr_html_(self) -> str:  # a notebook shows the drill, curves inline
        from ._report.html import run_dir_html

        return run_dir_html(self.run_dir)


def load_run(run_dir: str | os.PathLike[str]) -> Run:
    """Read `drill.json` and the records of a run directory written by `watch`.

    Raises `RunDirError` with what to do when the folder is missing, is not a run
    directory, or holds a corrupt or malformed drill or records.
    """
    path = Path(run_dir)
    return Run(run_dir=path, drill=load_drill(path), records=load_records(path))


def load_drill(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """`drill.json` of a run directory, checked: RunDirError naming the bad field."""
    path = Path(run_dir)
    try:
        drill = read_drill(path)
    except RecursionError:
        raise RunDirError(_nested(path / "drill.json")) from None
    except ValueError as exc:  # what a JSON parser or a bad encoding can still raise
        raise RunDirError(f"{path / 'drill.json'} is unreadable or corrupt ({exc})") from None
    problem = drill_problem(drill)
    if problem:
        raise RunDirError(
            f"{path / 'drill.json'} is not a valid trainlens drill ({problem}); "
            "rerun the training, or ask for the run directory again"
        )
    return drill


def load_records(run_dir: str | os.PathLike[str]) -> Records:
    """The records of a run directory, checked: RunDirError naming the file and column."""
    path = Path(run_dir)
    return check_records(path, lambda: Records.load(path))


def check_records(path: Path, load: Any) -> Records:
    """Records from `load()` (the final files, or the parts a killed run streamed),
    checked like `load_records` checks them: RunDirError naming the file and column."""
    meta_path = path / "run.json"
    try:
        records = load()
    except RecursionError:
        raise RunDirError(_nested(meta_path)) from None
    except UnicodeDecodeError:
        raise RunDirError(f"{meta_path} is not UTF-8 text: not written by trainlens") from None
    except ValueError as exc:
        raise RunDirError(f"{meta_path} is unreadable or corrupt ({exc})") from None
    if not isinstance(records.meta, dict):
        raise RunDirError(f"{meta_path} is not a JSON object: not written by trainlens")
    if _depth(records.meta) > MAX_DEPTH:
        raise RunDirError(_nested(meta_path))
    for name, frame in records.frames.items():
        problem = frame_problem(name, frame)
        if problem:
            raise RunDirError(
                f"{path / (name + '.parquet')} {problem}: not written by this trainlens; "
                "rerun the training, or remove the file"
            )
    return records


# --- checks ------------------------------------------------------------------------------
def drill_problem(drill: Any) -> str | None:
    """What makes a parsed drill unsafe for the readers, or None.

    The shipped schema first (the contract), then the fields the schema leaves open but
    report/compare read: the exception, the duration and the start time.
    """
    if _depth(drill) > MAX_DEPTH:
        return f"nested more than {MAX_DEPTH} levels deep"
    error = _schema_error(drill)
    if error is not None:
        return error
    exc = drill.get("exception")
    if exc is not None:
        if not isinstance(exc, dict) or not isinstance(exc.get("type"), str):
            return "exception: should be null or an object with a string type"
        for key, kinds in (("phase", (str,)), ("module", (str,)), ("step", (int,))):
            value = exc.get(key)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                return f"exception/{key}: should be {kinds[0].__name__} or null"
    duration = drill.get("duration_s")
    if duration is not None and (
        not isinstance(duration, (int, float)) or isinstance(duration, bool)
    ):
        return "duration_s: should be a number or null"
    for key in ("created", "trainlens_version"):
        if drill.get(key) is not None and not isinstance(drill[key], str):
            return f"{key}: should be a string or null"
    return None


_NUMBER_KINDS = frozenset({"integer", "floating", "mixed-integer-float", "boolean", "decimal"})


def frame_problem(name: str, frame: pd.DataFrame) -> str | None:
    """A records table missing a declared column, or holding the wrong kind of values."""
    columns = TABLES.get(name)
    if columns is None:
        return None  # a plugin's own table: nothing here reads it
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        return f"lacks the column(s) {', '.join(missing)}"
    if frame.empty:
        return None
    for column in columns:
        values = frame[column]
        if column in TEXT_COLUMNS:
            kind = pd.api.types.infer_dtype(values, skipna=True)
            if kind not in ("string", "empty"):
                return f"has {kind} values in the text column {column!r}"
        elif values.isna().all():
            continue
        elif not (
            pd.api.types.is_numeric_dtype(values.dtype)
            or pd.api.types.is_bool_dtype(values.dtype)
            # streamed parts where a column was all-null in some parts concatenate to
            # object dtype: still numbers (and nulls)
            or pd.api.types.infer_dtype(values, skipna=True) in _NUMBER_KINDS
        ):
            return f"has non-numeric values ({values.dtype}) in the number column {column!r}"
        elif column == "step" and not values.dropna().abs().lt(2**53).all():
            return "has steps that are not whole numbers below 2**53"
    return None


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    from ._resources import schema_path

    return jsonschema.Draft202012Validator(json.loads(schema_path().read_text(encoding="utf-8")))


def _schema_error(drill: Any) -> str | None:
    """The first schema violation as `where: what`, without echoing the (untrusted) value."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(drill))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "the top level"
    return f"{where}: {_schema_what(error.validator, error.validator_value, error.instance)}"


def _schema_what(check: Any, expected: Any, value: Any) -> str:
    if check == "type":
        return f"should be of type {expected}"
    if check == "enum":
        return f"should be one of {', '.join(map(str, expected))}"
    if check == "required":
        given = value if isinstance(value, dict) else {}
        return f"lacks {', '.join(k for k in expected if k not in given)}"
    if check == "minItems":
        return f"should have at least {expected} item(s)"
    if check == "minLength":
        return "should not be empty"
    if check in ("minimum", "maximum"):
        return f"should be at {'least' if check == 'minimum' else 'most'} {expected}"
    if check == "pattern":
        return f"should match {expected}"
    return f"fails the schema's {check!r} check"


def _depth(value: Any) -> int:
    """How deeply lists and objects nest (iteratively: a hostile file cannot recurse us)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def _nested(path: Path) -> str:
    return f"{path} is nested too deeply to be a trainlens file; not written by trainlens"
