"""``waitid(P_PIDFD)`` on readable pidfds: steal-free and O(ready children).

Linux >= 5.3 gives a pidfd per process (``os.pidfd_open``); it becomes readable
when the process exits, so the context's epoll tells exactly which children to
reap and nothing else is looked at. Children the context could not open a
pidfd for (``EMFILE``) are checked one by one on SIGCHLD, as
:mod:`~childproc._watchers.scan` does, so nothing is lost when fds run out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .._policy import WatcherKind
from .._status import status_from_siginfo
from ._base import Reaped
from .scan import scan

__all__ = ["PidfdWatcher", "supported", "open_pidfd"]

_supported: bool | None = None


def supported() -> bool:
    """Whether this kernel and Python give usable pidfds (probed once)."""
    global _supported
    if _supported is None:
        ok = hasattr(os, "pidfd_open") and hasattr(os, "P_PIDFD")
        if ok:
            try:
                os.close(os.pidfd_open(os.getpid()))
            except OSError:  # ENOSYS on old kernels, EPERM under seccomp
                ok = False
        _supported = ok
    return _supported


def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``, or None if pidfds are unsupported or none can be had now."""
    if not supported():
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # EMFILE/ENFILE: out of fds; ESRCH: already reaped by someone
        return None


_WAIT_EXITED = os.WEXITED | os.WNOHANG


class PidfdWatcher:
    """See the module docstring; contract in :mod:`childproc._watchers`."""

    kind = WatcherKind.PIDFD
    __slots__ = ("_fdless",)

    def __init__(self) -> None:
        self._fdless: dict[int, None] = {}  # children with no pidfd: scanned

    def add(self, pid: int, pidfd: int | None) -> None:
        if pidfd is None:
            self._fdless[pid] = None

    def remove(self, pid: int) -> None:
        self._fdless.pop(pid, None)

    def reap(self, woken: Sequence[tuple[int, int]], signalled: bool) -> Reaped:
        out = Reaped()
        waitid = os.waitid
        for pid, fd in woken:
            try:
                info = waitid(os.P_PIDFD, fd, _WAIT_EXITED)
            except ChildProcessError:
                out.gone.append(pid)
                continue
            if info is not None:
                out.exited.append((pid, status_from_siginfo(info.si_code, info.si_status)))
        if signalled and self._fdless:
            scan(list(self._fdless), out)
        return out
