"""``waitid(P_ALL)``, that is ``waitpid(-1)``: reap every child of the process.

Only for modes whose contract says the application has no children of its own
(LIBXL) or wants the library to reap them (LIBXL_ALWAYS): reaping by "any"
takes ``subprocess``'s children too, and ``Popen`` then reports returncode 0.

Where this process is a subreaper for process-group trees (LIBXL_ALWAYS; see
:mod:`childproc._subreaper`), each zombie's process group is read before it is
reaped, so that a tree's orphans that came back are routed as the tree's.

Each call costs the kernel a walk over the process's live children, so with
thousands of children alive the cost per reap grows with their number. That is
the cost floor of reaping by "any", not something a library can avoid;
``benchmarks/`` measures it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

from .._policy import WatcherKind
from .._subreaper import SUBREAPER
from ._base import Reaped, Watched, check_stops

__all__ = ["WaitAnyWatcher"]

_PEEK = os.WEXITED | os.WNOHANG | os.WNOWAIT
_NOHANG = (os.WNOHANG,)
_waitid = os.waitid
_wait4 = os.wait4
_reaped: Callable[[Any], Any] = itemgetter(0)  # wait4 reaped it (pid 0: it had not exited)


def _note_returned(pid: int, groups: list[int], returned: set[int]) -> None:
    """Note ``pid`` (a zombie, not reaped yet) if it is in one of ``groups`` and not
    its leader (a leader is a child someone made, never an orphan that came back)."""
    try:
        pgid = os.getpgid(pid)
        if pgid != pid and pgid in groups:
            returned.add(pid)
    except ProcessLookupError:
        pass  # reaped by someone else meanwhile


class WaitAnyWatcher:
    """See the module docstring; contract in :mod:`childproc._watchers`."""

    kind = WatcherKind.WAIT_ANY
    __slots__ = ("_stop_watchers",)

    def __init__(self) -> None:
        self._stop_watchers: dict[int, Watched] = {}

    def add(self, child: Watched) -> None:
        if child._watches_stops:
            self._stop_watchers[child._pid] = child
        else:
            self._stop_watchers.pop(child._pid, None)

    def remove(self, pid: int) -> None:
        self._stop_watchers.pop(pid, None)

    def reap(self, woken: Sequence[Watched], signalled: bool, out: Reaped) -> None:
        if signalled:
            for child in list(self._stop_watchers.values()):
                check_stops(child, out)
        before = len(out.exited)
        exited = out.exited
        groups = SUBREAPER.groups()
        try:
            # Each zombie, whoever's: a peek (WNOWAIT) names it (pid, uid), then wait4
            # reaps it with its resource usage, stored from C with the peek.
            while True:
                peek = _waitid(os.P_ALL, 0, _PEEK)
                if peek is None:
                    break
                if groups:  # (this process a subreaper: is it a tree's orphan, come back?)
                    _note_returned(peek.si_pid, groups, out.returned)
                try:
                    exited.extend(
                        zip((peek,), filter(_reaped, map(_wait4, (peek.si_pid,), _NOHANG)), strict=False)
                    )
                except ChildProcessError:
                    pass  # reaped by someone else between the two calls
        except ChildProcessError:
            pass  # no child at all
        if woken:
            # A pidfd is readable once its process died. If the loop did not
            # return that pid, somebody else reaped it: confirm with a peek.
            reaped = {info[0].si_pid for info in list(exited)[before:] if info is not None}
            for child in woken:
                if child._pid in reaped or child._pidfd is None:
                    continue
                try:
                    os.waitid(os.P_PIDFD, child._pidfd, _PEEK)
                except ChildProcessError:
                    out.gone.append(child._pid)
                except OSError as exc:
                    if exc.errno != errno.EBADF:
                        raise
                    out.fd_lost.append(child._pid)
