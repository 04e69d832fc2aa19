"""Loading a `path/to/file.py:factory` or `package.module:factory` target for the CLI.

Everything that can go wrong is a `TargetError` whose message says what to fix; the
user's own exception (an import error, a factory that raises) is chained to it, so
`--debug` shows its traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from ._errors import TargetError, UsageError

FORM = "path/to/file.py:factory or package.module:factory"


def load_factory(target: str) -> tuple[Callable[[], Any], str]:
    """The factory function a target names, and a short name for messages."""
    source, sep, attr = target.rpartition(":")
    if not sep or not source or not attr:
        raise TargetError(f"TARGET must be {FORM}, got {target!r}")
    module = _load_file(source) if _is_path(source) else _load_module(source)
    try:
        factory = getattr(module, attr)
    except AttributeError:
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[
            :8
        ]
        raise TargetError(
            f"{source} has no {attr!r}; define `def {attr}():` returning trainlens.Setup"
            + (f" (callables there: {', '.join(names)})" if names else "")
        ) from None
    if not callable(factory):
        raise TargetError(
            f"{source}:{attr} is a {type(factory).__name__}, not a function; it must be a "
            "factory taking no arguments"
        )
    return factory, f"{source}:{attr}"


def call_factory(factory: Callable[[], Any], name: str) -> Any:
    from ._overfit import Setup

    try:
        value = factory()
    except Exception as err:
        raise TargetError(
            f"factory {name}() raised {type(err).__name__}: {_one_line(err)}"
        ) from err
    try:
        return Setup.coerce(value, where=f"the value {name}() returned")
    except UsageError as err:
        raise TargetError(str(err)) from None


def _is_path(source: str) -> bool:
    return source.endswith(".py") or "/" in source or "\\" in source


def _load_file(source: str) -> ModuleType:
    path = Path(source).expanduser()
    if not path.is_file():
        raise TargetError(f"target file {source} not found (TARGET is {FORM})")
    name = f"_trainlens_target_{path.stem}_{uuid.uuid4().hex[:6]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - any .py file has a spec
        raise TargetError(f"cannot load {source} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    with _on_path(path.resolve().parent):
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            sys.modules.pop(name, None)
            raise TargetError(
                f"importing {source} raised {type(err).__name__}: {_one_line(err)}"
            ) from err
    return module


def _load_module(source: str) -> ModuleType:
    with _on_path(Path.cwd()):
        try:
            return importlib.import_module(source)
        except ModuleNotFoundError as err:
            if err.name and (source == err.name or source.startswith(err.name + ".")):
                raise TargetError(
                    f"module {source} not found (TARGET is {FORM}; run from the folder "
                    "that holds the package, or give a file path)"
                ) from None
            raise TargetError(
                f"importing {source} raised ModuleNotFoundError: {_one_line(err)}"
            ) from err
        except Exception as err:
            raise TargetError(
                f"importing {source} raised {type(err).__name__}: {_one_line(err)}"
            ) from err


@contextlib.contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    """Let the target import its neighbours, as `python file.py` would."""
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] if text else "(no message)"
