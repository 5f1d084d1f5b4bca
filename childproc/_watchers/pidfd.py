"""``waitid(P_PIDFD)`` on readable pidfds: steal-free and O(ready children).

Linux >= 5.3 gives a pidfd per process (``os.pidfd_open``); it becomes readable
when the process exits, so the context's epoll tells exactly which children to
reap and nothing else is looked at. Children the context could not open a
pidfd for (``EMFILE``) are checked one by one when the context is poked, as
:mod:`~childproc._watchers.scan` does (a thread peeking with ``WNOWAIT`` pokes
it), so nothing is lost when fds run out.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Sequence

from .._fds import OUT_OF_FDS
from .._policy import WatcherKind
from ._base import Reaped, Watched, check_exit, check_stops
from .scan import scan

__all__ = ["PidfdWatcher", "supported"]

_supported: bool | None = None


def supported() -> bool:
    """Whether this kernel and Python give usable pidfds (probed once: but a probe
    that found this process out of fds is no answer, and is made again later)."""
    global _supported
    if _supported is None:
        ok = hasattr(os, "pidfd_open") and hasattr(os, "P_PIDFD")
        if ok:
            opened: list[int] = []
            try:
                opened.extend(itertools.starmap(os.pidfd_open, ((os.getpid(),),)))  # (from C: no leak)
            except OSError as exc:  # ENOSYS on old kernels, EPERM under seccomp
                if exc.errno in OUT_OF_FDS or exc.errno == errno.ENOMEM:
                    return True  # (the kernel has them; each child's open copes with EMFILE)
                ok = False
            finally:
                if opened:
                    os.close(opened[0])
        _supported = ok
    return _supported


class PidfdWatcher:
    """See the module docstring; contract in :mod:`childproc._watchers`."""

    kind = WatcherKind.PIDFD
    __slots__ = ("_fdless", "_stop_watchers")

    def __init__(self) -> None:
        self._fdless: dict[int, Watched] = {}  # children with no pidfd: scanned
        self._stop_watchers: dict[int, Watched] = {}

    def add(self, child: Watched) -> None:
        pid = child._pid
        if child._pidfd is None:
            self._fdless[pid] = child
        if child._watches_stops:
            self._stop_watchers[pid] = child
        elif self._stop_watchers:
            self._stop_watchers.pop(pid, None)

    def remove(self, pid: int) -> None:
        if self._fdless:
            self._fdless.pop(pid, None)
        if self._stop_watchers:
            self._stop_watchers.pop(pid, None)

    def reap(self, woken: Sequence[Watched], signalled: bool, out: Reaped) -> None:
        if signalled:
            for child in list(self._stop_watchers.values()):
                if child._pidfd is not None:
                    check_stops(child, out)
        for child in woken:
            check_exit(child, out)
        if signalled and self._fdless:
            scan(list(self._fdless.values()), out)
