"""A context's wake-ups: its epoll (``fileno()``), its self-pipe, and the fds registered in them.

One object per context owns every fd the context opens: the epoll, the
self-pipe (:class:`~childproc._waker.Waker`), a pidfd per child and the exit
fd of each fork-server child. Rules:

* Every fd is opened above 2 (:func:`childproc._fds.above_stdio`): a host that
  closes and ``dup2``\\ s back its stdio never replaces one of ours.
* Each fd's identity is remembered when opened and checked before it is
  closed or unregistered: an fd someone else closed (and whose number now
  names another object) is left alone, and reported (:attr:`Wakeups.lost`).
* A pidfd reaches the table from C (``dict.update(zip(..., map(os.pidfd_open,
  ...)))``), so an exception a signal handler raises cannot separate an opened
  pidfd from its record.
* The caller holds the process lock, except around :meth:`Wakeups.poll`.
"""

from __future__ import annotations

import fcntl
import os
import select
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._fds import FdIdentity, above_stdio, close_if_ours, identify, still_ours
from ._waker import CLOSED_WAKER, Waker

if TYPE_CHECKING:
    from ._child import Child

__all__ = ["Wakeups"]

_pidfd_open = getattr(os, "pidfd_open", None)


def _new_epoll() -> select.epoll:
    ep = select.epoll()
    if ep.fileno() > 2:
        return ep
    moved = fcntl.fcntl(ep.fileno(), fcntl.F_DUPFD_CLOEXEC, 3)
    ep.close()
    return select.epoll.fromfd(moved)


class Wakeups:
    """See the module docstring."""

    def __init__(self) -> None:
        self.waker = Waker()
        try:
            self._epoll = _new_epoll()
            self._epoll.register(self.waker.rfd, select.EPOLLIN)
        except BaseException:
            self.waker.close_read()
            self.waker.close_write()
            raise
        self._ids: dict[int, FdIdentity] = {}  # fd -> what it was when opened
        self.pidfds: dict[int, int] = {}  # pid -> its pidfd
        self.polled: dict[int, Child] = {}  # pidfd in the epoll -> its child
        self.served: dict[int, Child] = {}  # exit fd in the epoll -> a fork server's child
        #: pids whose fd someone else closed, found since the last report.
        self.lost: list[int] = []

    def fileno(self) -> int:
        return self._epoll.fileno()

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return self._epoll.poll(timeout)

    # -- pidfds -------------------------------------------------------------
    def open_pidfd(self, pid: int) -> int | None:
        """A pidfd for ``pid`` (kept until :meth:`close_pidfd`), or None if none can
        be had now (out of fds; already reaped by someone)."""
        fd = self.pidfds.get(pid)
        if fd is not None and fd not in self._ids:  # an interrupted open: finish it
            self._ids[fd] = identify(fd, pid)
        if fd is None:
            try:
                self.pidfds.update(zip((pid,), map(_pidfd_open, (pid,)), strict=True))  # type: ignore[arg-type]
            except OSError:
                return None
            fd = self.pidfds[pid]
            if fd <= 2:
                fd = self.pidfds[pid] = above_stdio(fd)
            self._ids[fd] = identify(fd, pid)
        return fd

    def take_pidfd(self, pid: int, fd: int) -> int:
        """Own ``fd``, a pidfd for ``pid`` the caller opened (``adopt``)."""
        if fd <= 2:
            fd = above_stdio(fd)
        self.pidfds[pid] = fd
        self._ids[fd] = identify(fd, pid)
        return fd

    def close_pidfd(self, pid: int) -> None:
        fd = self.pidfds.get(pid)
        if fd is None:
            return
        child = self.polled.get(fd)
        if child is not None:
            self._unregister(fd)
            del self.polled[fd]
            child._polled = False
        self._close(fd, pid)
        self.pidfds.pop(pid, None)

    def give_pidfd(self, pid: int) -> int | None:
        """Hand ``pid``'s pidfd to someone else (the orphanage): no longer ours."""
        fd = self.pidfds.get(pid)
        if fd is None:
            return None
        if fd in self.polled:
            self.polled[fd]._polled = False
            self._unregister(fd)
            del self.polled[fd]
        if not still_ours(fd, self._ids.get(fd, (0, 0, 0, 0))):
            self._report_lost(pid)
            fd = None
        self.pidfds.pop(pid, None)
        return fd

    def poll_pidfd(self, child: Child) -> bool:
        """Put ``child``'s pidfd in the epoll; False if it cannot be (ENOSPC, ENOMEM)."""
        fd = child._pidfd
        if fd is None:
            return False
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except FileExistsError:
            pass
        except OSError:
            return False
        self.polled[fd] = child
        child._polled = True
        return True

    def unpoll(self, child: Child) -> None:
        """Take ``child``'s pidfd out of the epoll (a zombie's pidfd stays readable)."""
        fd = child._pidfd
        if fd is not None and child._polled:
            self._unregister(fd)
            self.polled.pop(fd, None)
            child._polled = False

    # -- fork server exit fds -----------------------------------------------
    def add_served(self, child: Child, exit_fd: int) -> int:
        if exit_fd <= 2:
            exit_fd = above_stdio(exit_fd)
        self._ids[exit_fd] = identify(exit_fd)
        self.served[exit_fd] = child
        self._epoll.register(exit_fd, select.EPOLLIN)
        return exit_fd

    def remove_served(self, exit_fd: int) -> None:
        child = self.served.pop(exit_fd, None)
        self._unregister(exit_fd)
        self._close(exit_fd, child._pid if child is not None else 0)

    # -- checks -------------------------------------------------------------
    def verify(self, pids: Iterable[int]) -> None:
        """Check that the pidfds of ``pids`` are still ours; report those that are not."""
        for pid in pids:
            fd = self.pidfds.get(pid)
            if fd is None:
                continue
            if fd not in self._ids:  # opened, then interrupted before it was identified
                self._ids[fd] = identify(fd, pid)
            elif not still_ours(fd, self._ids[fd]):
                self.forget_fd(pid)

    def forget_fd(self, pid: int) -> None:
        """``pid``'s pidfd was closed by someone else: drop it without closing, report it."""
        fd = self.pidfds.pop(pid, None)
        if fd is None:
            return
        child = self.polled.pop(fd, None)
        if child is not None:
            child._polled = False
        self._ids.pop(fd, None)
        self._report_lost(pid)

    def _report_lost(self, pid: int) -> None:
        if pid not in self.lost:
            self.lost.append(pid)

    def _unregister(self, fd: int) -> None:
        if still_ours(fd, self._ids.get(fd, (0, 0, 0, 0))):
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def _close(self, fd: int, pid: int) -> None:
        identity = self._ids.pop(fd, None)
        if identity is not None and not close_if_ours(fd, identity):
            self._report_lost(pid)

    # -- teardown -----------------------------------------------------------
    def close(self) -> None:
        """Close every fd still ours (the pidfds left, exit fds, epoll, pipe)."""
        for pid in list(self.pidfds):
            self.close_pidfd(pid)
        for fd in list(self.served):
            self.remove_served(fd)
        self._epoll.close()
        self.waker.close_read()
        # The write end is never closed explicitly: the SIGCHLD handler or a peek
        # thread may hold the waker right now and poke it. It closes with the
        # waker's last reference, which is usually this one.
        self.waker = CLOSED_WAKER

    def abandon_after_fork(self) -> None:
        """In a forked child: close every fd (they are the parent's objects), check nothing."""
        for fd in [*self.pidfds.values(), *self.served]:
            try:
                os.close(fd)
            except OSError:
                pass
        self.pidfds.clear()
        self.served.clear()
        self.polled.clear()
        self._ids.clear()
        try:
            self._epoll.close()
        except OSError:  # pragma: no cover
            pass
        self.waker.close_read()
        self.waker.close_write()
