"""One exception hierarchy: every error a user can cause says what to do.

The CLI maps `TrainlensError` to exit status 2 with one line; anything else is a bug and
shows a traceback. Exceptions raised by the user's own code are never wrapped.
"""

from __future__ import annotations


class TrainlensError(Exception):
    """Base class of every error trainlens raises on purpose."""


class UsageError(TrainlensError, ValueError):
    """trainlens was called with arguments it cannot work with."""


class RunDirError(TrainlensError, OSError):
    """A run directory cannot be written, or is missing or corrupt when read back."""


class TargetError(TrainlensError):
    """A `file.py:factory` / `module:factory` target cannot be loaded or gave a bad value."""


class CatalogueError(TrainlensError):
    """A recipe file of the failure catalogue is malformed."""
