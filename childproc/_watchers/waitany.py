"""``waitid(P_ALL)``: reap every child of the process.

Only for modes whose contract says the application has no children of its own
(LIBXL) or wants the library to reap them (LIBXL_ALWAYS): reaping by "any"
takes ``subprocess``'s children too, and ``Popen`` then reports returncode 0.

Each call costs the kernel a walk over the process's live children, so with
thousands of children alive the cost per reap grows with their number. That is
the cost floor of reaping by "any", not something a library can avoid;
``benchmarks/`` measures it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .._policy import WatcherKind
from ._base import Reaped, Watched, check_stops, found_from_waitid, waitid_child

__all__ = ["WaitAnyWatcher"]

_ANY_EXITED = os.WEXITED | os.WNOHANG
_PEEK = os.WEXITED | os.WNOHANG | os.WNOWAIT


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

    def reap(self, woken: Sequence[Watched], signalled: bool) -> Reaped:
        out = Reaped()
        if signalled:
            for child in list(self._stop_watchers.values()):
                check_stops(child, out)
        waitid = os.waitid
        while True:
            try:
                info = waitid(os.P_ALL, 0, _ANY_EXITED)
            except ChildProcessError:
                break
            if info is None:
                break
            out.exited.append(found_from_waitid(info))
        if woken:
            # A pidfd is readable once its process died. If the loop did not
            # return that pid, somebody else reaped it: confirm with a peek.
            reaped: set[int] = set()
            for found in out.exited:  # (a loop, not a set comprehension: one object fewer per fork)
                reaped.add(found[0])
            for child in woken:
                if child._pid in reaped or child._pidfd is None:
                    continue
                try:
                    waitid_child(child, _PEEK)
                except ChildProcessError:
                    out.gone.append(child._pid)
        return out
