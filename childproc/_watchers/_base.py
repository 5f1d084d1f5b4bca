"""The watcher interface; see the package docstring for the contract."""

from __future__ import annotations

import errno
import os
import resource  # (os.wait4 imports it on each call: loaded here, no bytecode runs after a reap)
from collections import deque
from collections.abc import Sequence
from operator import itemgetter
from typing import Protocol

from .._policy import WatcherKind
from .._status import status_from_siginfo

__all__ = [
    "Found",
    "Reaped",
    "Rusaged",
    "Watched",
    "Watcher",
    "check_exit",
    "check_stops",
    "found_from_waitid",
    "reap_zombie",
    "still_running",
]

#: ``(pid, wait status, uid or None)``
Found = tuple[int, int, "int | None"]
#: What ``os.wait4``/``os.wait3`` return: ``(pid, wait status, resource usage)``.
Rusaged = tuple[int, int, "resource.struct_rusage"]


class Watched(Protocol):
    """What a watcher reads of a child (the context's child record; read-only here).

    Plain attributes of the child record (the watchers are part of the core).
    """

    _pid: int
    _pidfd: int | None
    #: The child asked for stop/continue events.
    _watches_stops: bool
    #: Report the exit without reaping (WNOWAIT); the context reaps after the callback.
    _defer_reap: bool


class Reaped:
    """A context's journal of what its watcher found, kept until the context applied it.

    Each system call that changes the kernel's state (a reap) stores its result
    here from C (``deque.extend(map(os.wait4, ...))``), with no Python bytecode
    between the call and the store: an exception raised by a signal handler
    (``KeyboardInterrupt``) can then interrupt the watcher only before a reap
    or after its result is safe here. The context applies the entries in order
    and removes each once applied. Entries are raw ``waitid`` and ``wait4``
    results (None where nothing had changed): a reap is a peek (``WNOWAIT``),
    which names the child, then ``wait4`` on its pid, for its resource usage.
    """

    __slots__ = ("changed", "exited", "fd_lost", "gone", "own", "peeked", "returned")

    def __init__(self) -> None:
        #: Children of ours reaped through their own pidfd (or pid), with the result:
        #: these need no routing, the reap named the child.
        #: (child, its peek, what wait4 returned).
        self.own: deque[tuple[Watched, os.waitid_result, Rusaged]] = deque()
        #: Reaped by ``WaitAnyWatcher`` (a peek at any zombie, then ``wait4`` on it), in
        #: the order reaped: any child of the process, ours or not, routed when applied.
        self.exited: deque[tuple[os.waitid_result, Rusaged] | None] = deque()
        #: Exits seen without reaping (``WNOWAIT``): ``defer_reap`` children, still zombies.
        self.peeked: deque[os.waitid_result | None] = deque()
        #: Stops and continues.
        self.changed: deque[os.waitid_result | None] = deque()
        #: pids of ours that were gone (``ECHILD``): someone else reaped them.
        self.gone: deque[int] = deque()
        #: pids of ours whose pidfd someone else closed (``EBADF``).
        self.fd_lost: deque[int] = deque()
        #: pids ``WaitAnyWatcher`` saw, before reaping them, as zombies in a process-group
        #: tree's group that this (subreaper) process tracks: routed as that tree's
        #: orphans unless a context owns them. Cleared once the exits were applied.
        self.returned: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self.own or self.exited or self.peeked or self.changed or self.gone or self.fd_lost)


class Watcher(Protocol):
    kind: WatcherKind

    def add(self, child: Watched) -> None:
        """Start watching ``child``; also called again after its options changed."""

    def remove(self, pid: int) -> None:
        """Stop watching ``pid``; unknown pids are ignored."""

    def reap(self, woken: Sequence[Watched], signalled: bool, out: Reaped) -> None:
        """Reap what has exited, without blocking, into ``out``."""


STOP_FLAGS = os.WSTOPPED | os.WCONTINUED | os.WNOHANG
EXIT_FLAGS = os.WEXITED | os.WNOHANG
PEEK_FLAGS = EXIT_FLAGS | os.WNOWAIT
_P_PIDFD = getattr(os, "P_PIDFD", -1)  # -1: never used without pidfds
_P_PID = os.P_PID
_waitid = os.waitid
_wait4 = os.wait4
_reaped = itemgetter(0)  # a wait4/wait3 result that names a pid: something was reaped


def found_from_waitid(info: os.waitid_result) -> Found:
    return (info.si_pid, status_from_siginfo(info.si_code, info.si_status), info.si_uid)


def _capture(into: deque[os.waitid_result | None], child: Watched, flags: int) -> None:
    """``waitid`` on ``child`` into ``into``: through its pidfd where there is one
    (never a recycled pid), else by pid. Raises ``ChildProcessError`` if it is gone,
    ``OSError(EBADF)`` if its pidfd was closed behind childproc's back."""
    pidfd = child._pidfd
    if pidfd is not None:
        into.extend(filter(None, map(_waitid, (_P_PIDFD,), (pidfd,), (flags,))))
    else:
        into.extend(filter(None, map(_waitid, (_P_PID,), (child._pid,), (flags,))))


def _reap_own(into: deque[tuple[Watched, os.waitid_result, Rusaged]], child: Watched) -> None:
    """Reap ``child`` if it died, into ``into`` as (child, peek, (pid, wait status,
    rusage)): a peek (``WNOWAIT``) through its pidfd (or pid) says it is our
    zombie, then ``wait4`` on its pid reaps it with its resource usage (a zombie's
    pid cannot be reused before it is reaped). The reap is stored from C as
    :func:`_capture` stores. Raises as :func:`_capture`."""
    pidfd = child._pidfd
    how, which = (_P_PIDFD, pidfd) if pidfd is not None else (_P_PID, child._pid)
    peek = _waitid(how, which, PEEK_FLAGS)
    if peek is not None:
        reap = filter(_reaped, map(_wait4, (child._pid,), (os.WNOHANG,)))
        into.extend(zip((child,), (peek,), reap, strict=False))


def _lost(child: Watched, out: Reaped, exc: OSError) -> None:
    if exc.errno != errno.EBADF or child._pidfd is None:
        raise exc
    out.fd_lost.append(child._pid)


def reap_zombie(child: Watched) -> None:
    """Reap ``child``, whose exit was already seen (never blocks); gone already is fine."""
    try:
        if child._pidfd is not None:
            _waitid(_P_PIDFD, child._pidfd, EXIT_FLAGS)
        else:
            _waitid(_P_PID, child._pid, EXIT_FLAGS)
    except ChildProcessError:
        pass
    except OSError as exc:  # its pidfd was closed by someone else: by pid (still unreaped)
        if exc.errno != errno.EBADF:
            raise
        try:
            _waitid(_P_PID, child._pid, EXIT_FLAGS)
        except ChildProcessError:
            pass


def check_stops(child: Watched, out: Reaped) -> None:
    """Collect (and consume) a pending stop/continue of ``child`` into ``out.changed``."""
    try:
        _capture(out.changed, child, STOP_FLAGS)
    except ChildProcessError:
        return  # gone: the exit check reports it
    except OSError as exc:
        _lost(child, out, exc)


def still_running(child: Watched) -> bool | None:
    """Whether ``child`` still runs, looked at without reaping it (``WNOWAIT``): True,
    False (it exited: a zombie, or reaped already by someone), or None (its pidfd was
    closed behind childproc's back: cannot tell now). Through its pidfd where there is
    one, else by pid."""
    pidfd = child._pidfd
    try:
        if pidfd is not None:
            return _waitid(_P_PIDFD, pidfd, PEEK_FLAGS) is None
        return _waitid(_P_PID, child._pid, PEEK_FLAGS) is None
    except ChildProcessError:
        return False
    except OSError:
        return None


def check_exit(child: Watched, out: Reaped) -> None:
    """Reap ``child`` if it died (or only peek, for ``defer_reap``), into ``out``."""
    try:
        if child._defer_reap:
            _capture(out.peeked, child, PEEK_FLAGS)
        else:
            _reap_own(out.own, child)
    except ChildProcessError:
        out.gone.append(child._pid)
    except OSError as exc:
        _lost(child, out, exc)
