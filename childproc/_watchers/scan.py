"""``waitid(P_PID, pid)`` for each child: steal-free, O(children) per signal.

The fallback where pidfds are missing (old kernels, seccomp filters). It is
what libxl's SELECTIVE_REAP does, and what Twisted, Tornado and libuv do on
every SIGCHLD.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .._policy import WatcherKind
from ._base import Reaped, Watched, check_exit, check_stops

__all__ = ["ScanWatcher", "scan"]


def scan(children: Iterable[Watched], out: Reaped) -> None:
    """Check each of ``children`` for stop/continue (if wanted) and exit, into ``out``."""
    for child in children:
        if child._watches_stops:
            check_stops(child, out)
        check_exit(child, out)


class ScanWatcher:
    """See the module docstring; contract in :mod:`childproc._watchers`."""

    kind = WatcherKind.SCAN
    __slots__ = ("_children",)

    def __init__(self) -> None:
        self._children: dict[int, Watched] = {}

    def add(self, child: Watched) -> None:
        self._children[child._pid] = child

    def remove(self, pid: int) -> None:
        self._children.pop(pid, None)

    def reap(self, woken: Sequence[Watched], signalled: bool, out: Reaped) -> None:
        if signalled or woken:
            scan(list(self._children.values()), out)
