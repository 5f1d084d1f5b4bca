"""No watcher: in MAINLOOP the application reaps and reports."""

from __future__ import annotations

from collections.abc import Sequence

from .._policy import WatcherKind
from ._base import Reaped, Watched

__all__ = ["NoWatcher"]


class NoWatcher:
    """Reaps nothing; see :mod:`childproc._watchers` for the contract."""

    kind = WatcherKind.NONE
    __slots__ = ()

    def add(self, child: Watched) -> None:
        pass

    def remove(self, pid: int) -> None:
        pass

    def reap(self, woken: Sequence[Watched], signalled: bool, out: Reaped) -> None:
        pass
