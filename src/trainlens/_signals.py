"""SIGTERM inside a watch block: write the drill, then end the way SIGTERM would have.

A scheduler, `timeout`, a time limit or torchrun stops a process with SIGTERM. If the
program does not handle SIGTERM itself, the block installs a handler (main thread only,
no per-step cost) that raises `TerminatedBySignal`: the block unwinds, the drill is
written, and then the default action is restored and the signal sent again, so the
process ends with the status a plain SIGTERM gives (killed by signal 15). While the run
is written, a further SIGTERM or SIGINT is held back and delivered afterwards, so the
files on disk are whole.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any


class TerminatedBySignal(SystemExit):
    """The process was asked to stop (SIGTERM) while a watch block ran."""

    def __init__(self, signum: int, distributed: bool = False):
        super().__init__(128 + signum)
        self.signum = signum
        self.distributed = distributed

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        if self.distributed:
            return (
                f"terminated by {self.signal_name}: the launcher (torchrun) stops every rank "
                "when one of them fails; look for the rank that failed first"
            )
        return (
            f"terminated by {self.signal_name}: something outside the program (a scheduler's "
            "time limit, `timeout`, `kill`) stopped it"
        )


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class SigtermGuard:
    """Turns a SIGTERM into `TerminatedBySignal`, unless the program handles SIGTERM."""

    def __init__(self, distributed: bool = False):
        self.distributed = distributed
        self.installed = False
        self.signalled: int | None = None
        self._held: list[int] = []
        self._saved: dict[int, Any] = {}

    def install(self) -> None:
        if not _main_thread():
            return  # signal.signal works only there: skip quietly
        if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:  # the user's own, or ignored
            return
        signal.signal(signal.SIGTERM, self._raise)
        self.installed = True

    def _raise(self, signum: int, frame: Any) -> None:
        self.signalled = signum
        raise TerminatedBySignal(signum, self.distributed)

    def hold(self) -> None:
        """From here until `release`, SIGTERM and SIGINT wait: the files must be written."""
        if not _main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            current = signal.getsignal(signum)
            if signum == signal.SIGTERM and not self.installed:
                continue  # the user's own SIGTERM handler stays in charge
            if signum == signal.SIGINT and current is not signal.default_int_handler:
                continue
            self._saved[signum] = current
            signal.signal(signum, self._hold)

    def _hold(self, signum: int, frame: Any) -> None:
        self._held.append(signum)

    @property
    def terminating(self) -> bool:
        return self.signalled is not None or bool(self._held)

    def release(self) -> None:
        """Restore the handlers; deliver a held signal or end a terminated process."""
        if not _main_thread():
            return
        saved, self._saved = self._saved, {}
        for signum, handler in saved.items():
            if signal.getsignal(signum) == self._hold:
                signal.signal(signum, handler)
        if self.installed:
            self.installed = False
            if signal.getsignal(signal.SIGTERM) == self._raise:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
        held, self._held = self._held, []
        if self.signalled is not None and not self.distributed:
            # end the process as the SIGTERM would have (the default action is back)
            signal.signal(self.signalled, signal.SIG_DFL)
            os.kill(os.getpid(), self.signalled)
        for signum in held[:1]:
            os.kill(os.getpid(), signum)  # what was asked while we wrote, now
