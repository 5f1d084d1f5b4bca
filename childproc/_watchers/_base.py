"""The watcher interface; see the package docstring for the contract."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .._policy import WatcherKind

__all__ = ["Reaped", "Watcher"]


@dataclass
class Reaped:
    """What one :meth:`Watcher.reap` call found."""

    #: ``(pid, wait status)`` for every child reaped, in the order reaped.
    exited: list[tuple[int, int]] = field(default_factory=list)
    #: pids of ours that were gone (``ECHILD``): someone else reaped them.
    gone: list[int] = field(default_factory=list)


class Watcher(Protocol):
    kind: WatcherKind

    def add(self, pid: int, pidfd: int | None) -> None:
        """Start watching ``pid`` (``pidfd`` is None where none could be opened)."""

    def remove(self, pid: int) -> None:
        """Stop watching ``pid``; unknown pids are ignored."""

    def reap(self, woken: Sequence[tuple[int, int]], signalled: bool) -> Reaped:
        """Reap what has exited, without blocking."""
