"""No watcher: in MAINLOOP the application reaps and reports."""

from __future__ import annotations

from collections.abc import Sequence

from .._policy import WatcherKind
from ._base import Reaped

__all__ = ["NoWatcher"]


class NoWatcher:
    """Reaps nothing; see :mod:`childproc._watchers` for the contract."""

    kind = WatcherKind.NONE
    __slots__ = ()

    def add(self, pid: int, pidfd: int | None) -> None:
        pass

    def remove(self, pid: int) -> None:
        pass

    def reap(self, woken: Sequence[tuple[int, int]], signalled: bool) -> Reaped:
        return Reaped()
