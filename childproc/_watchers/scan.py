"""``waitpid(pid, WNOHANG)`` for each child: steal-free, O(children) per signal.

The fallback where pidfds are missing (old kernels, seccomp filters, file
descriptors exhausted). It is what libxl's SELECTIVE_REAP does, and what
Twisted, Tornado and libuv do on every SIGCHLD.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from .._policy import WatcherKind
from ._base import Reaped

__all__ = ["ScanWatcher", "scan"]


def scan(pids: Iterable[int], out: Reaped) -> Reaped:
    """Reap whichever of ``pids`` have exited, into ``out``."""
    waitpid = os.waitpid
    wnohang = os.WNOHANG
    for pid in pids:
        try:
            rpid, status = waitpid(pid, wnohang)
        except ChildProcessError:
            out.gone.append(pid)
            continue
        if rpid:
            out.exited.append((rpid, status))
    return out


class ScanWatcher:
    """See the module docstring; contract in :mod:`childproc._watchers`."""

    kind = WatcherKind.SCAN
    __slots__ = ("_pids",)

    def __init__(self) -> None:
        self._pids: dict[int, None] = {}  # insertion-ordered set

    def add(self, pid: int, pidfd: int | None) -> None:
        self._pids[pid] = None

    def remove(self, pid: int) -> None:
        self._pids.pop(pid, None)

    def reap(self, woken: Sequence[tuple[int, int]], signalled: bool) -> Reaped:
        out = Reaped()
        if signalled or woken:
            scan(list(self._pids), out)
        return out
