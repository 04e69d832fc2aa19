"""Where the data that ships with trainlens lives: recipes/, examples/, the drill schema.

A wheel carries recipes/ and examples/ inside the package; an editable install (or a
source checkout) reads the repository's own copies, so edits show up without reinstalling.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The packaged `trainlens/<name>` folder, else `<repo>/<name>` beside `src/`."""
    packaged = _PACKAGE / name
    if packaged.is_dir():
        return packaged
    repo = _PACKAGE.parent.parent / name
    if repo.is_dir():
        return repo
    raise FileNotFoundError(
        f"trainlens data folder {name!r} is missing from this installation "
        f"(looked in {packaged} and {repo}); reinstall trainlens"
    )


def schema_path() -> Path:
    return _PACKAGE / "drill.schema.json"
