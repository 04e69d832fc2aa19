"""The installed version of trainlens (a leaf module, so no one imports the package root)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

#: the name on the package index (`pip install trainlens-debugger`); `trainlens` there is
#: an unrelated project. The import name and the console script stay `trainlens`.
DISTRIBUTION = "trainlens-debugger"


def _installed_version() -> str:
    # "trainlens": a checkout installed before the rename, recognised by our console
    # script (the unrelated `trainlens` on the index has its own)
    for name in (DISTRIBUTION, "trainlens"):
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        if name == DISTRIBUTION or any(
            ep.value == "trainlens._cli:main" for ep in dist.entry_points
        ):
            return dist.version
    return "0.0.0+unknown"  # running from a source tree


__version__ = _installed_version()
