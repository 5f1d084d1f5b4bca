"""``waitpid(-1, WNOHANG)``: reap every child of the process.

Only for modes whose contract says the application has no children of its own
(LIBXL) or wants the library to reap them (LIBXL_ALWAYS): ``waitpid(-1)`` takes
``subprocess``'s children too, and ``Popen`` then reports returncode 0.

Each call costs the kernel a walk over the process's live children, so with
thousands of children alive the cost per reap grows with their number. That is
the cost floor of reaping by ``-1``, not something a library can avoid;
``benchmarks/`` measures it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .._policy import WatcherKind
from ._base import Reaped

__all__ = ["WaitAnyWatcher"]

_WNOHANG = os.WNOHANG
_PEEK = os.WEXITED | os.WNOHANG | os.WNOWAIT


class WaitAnyWatcher:
    """See the module docstring; contract in :mod:`childproc._watchers`."""

    kind = WatcherKind.WAIT_ANY
    __slots__ = ()

    def add(self, pid: int, pidfd: int | None) -> None:
        pass  # waitpid(-1) needs no per-child state

    def remove(self, pid: int) -> None:
        pass

    def reap(self, woken: Sequence[tuple[int, int]], signalled: bool) -> Reaped:
        out = Reaped()
        waitpid = os.waitpid
        while True:
            try:
                pid, status = waitpid(-1, _WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            out.exited.append((pid, status))
        if woken:
            # A pidfd is readable once its process died. If waitpid(-1) did not
            # return that pid, somebody else reaped it: confirm with a peek.
            reaped = {pid for pid, _ in out.exited}
            for pid, fd in woken:
                if pid in reaped:
                    continue
                try:
                    os.waitid(os.P_PIDFD, fd, _PEEK)
                except ChildProcessError:
                    out.gone.append(pid)
        return out
