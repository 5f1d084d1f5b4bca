"""The watcher interface; see the package docstring for the contract."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

from .._policy import WatcherKind
from .._status import status_from_siginfo

__all__ = ["Found", "Reaped", "Watched", "Watcher", "found_from_waitid"]

#: ``(pid, wait status, uid or None)``
Found = tuple[int, int, "int | None"]


class Watched(Protocol):
    """What a watcher reads of a child (the context's child record; read-only here).

    Plain attributes, not properties: they are read for every child reaped, and
    after a ``fork()`` each object a call touches costs the parent a page copy.
    """

    _pid: int
    _pidfd: int | None
    #: The child asked for stop/continue events.
    _watches_stops: bool
    #: Report the exit without reaping (WNOWAIT); the context reaps after the callback.
    _defer_reap: bool


class Reaped:
    """What one :meth:`Watcher.reap` call found (a plain class: one is made per wake-up)."""

    __slots__ = ("changed", "exited", "gone")

    def __init__(self) -> None:
        #: Children reaped (dead and gone), in the order reaped. May include pids
        #: nobody in childproc made (``WaitAnyWatcher`` only).
        self.exited: list[Found] = []
        #: State changes seen without reaping: stop/continue, and the exits of
        #: ``defer_reap`` children (still zombies).
        self.changed: list[Found] = []
        #: pids of ours that were gone (``ECHILD``): someone else reaped them.
        self.gone: list[int] = []


class Watcher(Protocol):
    kind: WatcherKind

    def add(self, child: Watched) -> None:
        """Start watching ``child``; also called again after its options changed."""

    def remove(self, pid: int) -> None:
        """Stop watching ``pid``; unknown pids are ignored."""

    def reap(self, woken: Sequence[Watched], signalled: bool) -> Reaped:
        """Reap what has exited, without blocking."""


STOP_FLAGS = os.WSTOPPED | os.WCONTINUED | os.WNOHANG
EXIT_FLAGS = os.WEXITED | os.WNOHANG
PEEK_FLAGS = EXIT_FLAGS | os.WNOWAIT
_P_PIDFD = getattr(os, "P_PIDFD", -1)  # -1: never used without pidfds
_P_PID = os.P_PID
_waitid = os.waitid


def found_from_waitid(info: os.waitid_result) -> Found:
    return (info.si_pid, status_from_siginfo(info.si_code, info.si_status), info.si_uid)


def waitid_child(child: Watched, flags: int) -> os.waitid_result | None:
    """``waitid`` on ``child``: through its pidfd where there is one (never a recycled
    pid), else by pid. Raises ``ChildProcessError`` if it is gone."""
    pidfd = child._pidfd
    if pidfd is not None:
        return _waitid(_P_PIDFD, pidfd, flags)
    return _waitid(_P_PID, child._pid, flags)


def reap_zombie(child: Watched) -> None:
    """Reap ``child``, whose exit was already seen (never blocks); gone already is fine."""
    try:
        waitid_child(child, EXIT_FLAGS)
    except ChildProcessError:
        pass


def check_stops(child: Watched, out: Reaped) -> None:
    """Collect (and consume) a pending stop/continue of ``child`` into ``out.changed``."""
    try:
        info = waitid_child(child, STOP_FLAGS)
    except ChildProcessError:
        return  # gone: the exit check reports it
    if info is not None:
        out.changed.append(found_from_waitid(info))


def check_exit(child: Watched, out: Reaped) -> None:
    """Reap ``child`` if it died (or only peek, for ``defer_reap``), into ``out``."""
    defer = child._defer_reap
    pidfd = child._pidfd
    try:  # (waitid_child and found_from_waitid, inline: every child passes here)
        if pidfd is not None:
            info = _waitid(_P_PIDFD, pidfd, PEEK_FLAGS if defer else EXIT_FLAGS)
        else:
            info = _waitid(_P_PID, child._pid, PEEK_FLAGS if defer else EXIT_FLAGS)
    except ChildProcessError:
        out.gone.append(child._pid)
        return
    if info is not None:
        found = (info.si_pid, status_from_siginfo(info.si_code, info.si_status), info.si_uid)
        (out.changed if defer else out.exited).append(found)
