"""For the programs that reuse another program of the collection: a twin flips its bug
flag, a variant changes its loop. `benchmarks/diagnosis.load_program` puts this folder on
`sys.path`, as running a script puts its own folder there."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def sibling(file_name: str) -> ModuleType:
    """A fresh copy of the program `file_name` beside this one: setting its flags touches
    no other program's copy."""
    path = Path(__file__).with_name(file_name)
    spec = importlib.util.spec_from_file_location(f"_sibling_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
