"""A context's wake-ups: its epoll (``fileno()``), its self-pipe, and the fds registered in them.

One object per context owns every fd the context opens: the epoll, the
self-pipe (:class:`~childproc._waker.Waker`), a pidfd per child and the exit
fd of each fork-server child. Rules:

* Every fd is opened above 2 (:func:`childproc._fds.above_stdio`): a host that
  closes and ``dup2``\\ s back its stdio never replaces one of ours.
* Each fd's identity is remembered when opened and checked before it is
  closed: an fd someone else closed (and whose number now names another
  object) is left alone, and reported (:attr:`Wakeups.lost`). Taking an fd out
  of the epoll needs no such check: the epoll finds a registration by the file
  the number names now, so a host's file there is not found (ENOENT), and one of
  ours there is another child's, which the tables (``polled``, ``served``) tell
  apart before the call.
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

from ._fds import OTHER, OURS, FdIdentity, above_stdio, fd_state, identify
from ._waker import CLOSED_WAKER, Waker

if TYPE_CHECKING:
    from ._child import Child

__all__ = ["Wakeups"]

#: epoll objects whose fd number someone else took over (see Wakeups.close).
_STRANDED: list[select.epoll] = []

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
            self.waker.close()
            raise
        self._epoll_id = identify(self._epoll.fileno())
        self._ids: dict[int, FdIdentity] = {}  # pid (-pid: exit fd) -> what its fd was when opened
        self._closed: dict[int, int] = {}  # pid (-pid) -> its fd, closed by us, entry not yet dropped
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
    # Identities and "closed by us" marks are kept per child (a pid for a pidfd, minus
    # the pid for an exit fd), never per fd number: once closed, a number may be
    # reused by the next child's fd, and a step replayed after an interruption must
    # not touch that one.
    def open_pidfd(self, pid: int) -> int | None:
        """A pidfd for ``pid`` (kept until :meth:`close_pidfd`), or None if none can
        be had now (out of fds; already reaped by someone)."""
        fd = self.pidfds.get(pid)
        if fd is None:
            # No pidfd for this pid: any mark left under it is stale (a close of an
            # earlier child with the same pid, interrupted between its last steps).
            self._ids.pop(pid, None)
            self._closed.pop(pid, None)
            try:
                self.pidfds.update(zip((pid,), map(_pidfd_open, (pid,)), strict=True))  # type: ignore[arg-type]
            except OSError:
                return None
            fd = self.pidfds[pid]
            if fd <= 2:
                fd = self.pidfds[pid] = above_stdio(fd)
        if pid not in self._ids:  # (also finishes an interrupted open)
            self._ids[pid] = identify(fd, pid)
        return fd

    def take_pidfd(self, pid: int, fd: int) -> int:
        """Own ``fd``, a pidfd for ``pid`` the caller opened (``adopt``)."""
        if fd <= 2:
            fd = above_stdio(fd)
        self.pidfds[pid] = fd
        self._ids[pid] = identify(fd, pid)
        return fd

    def close_pidfd(self, pid: int) -> None:
        """Close ``pid``'s pidfd (if still ours), out of the epoll first: a close alone
        leaves it there, and readable, for as long as another copy of its file lives
        (a child being spawned holds one until its exec has closed it, which may be
        after ``posix_spawn`` returned; an adopter keeps its own with
        ``own_pidfd=False``). Safe to run again after an interruption: the fd leaves
        the epoll and the tables while its number is still ours, and the pidfd table
        only once it is closed."""
        fd = self.pidfds.get(pid)
        if fd is None:
            return
        self._unpoll(pid, fd)
        self._close(pid, fd)
        self.pidfds.pop(pid, None)
        self._ids.pop(pid, None)
        self._closed.pop(pid, None)

    def pidfd_of(self, pid: int) -> int | None:
        return self.pidfds.get(pid)

    def pidfd_is_ours(self, pid: int) -> bool:
        """Whether ``pid``'s pidfd is still the one opened (not closed by someone
        else, the orphanage after an interrupted hand-over included)."""
        fd = self.pidfds.get(pid)
        identity = self._ids.get(pid)
        return fd is not None and (identity is None or fd_state(fd, identity) == OURS)

    def disown_pidfd(self, pid: int) -> None:
        """Forget ``pid``'s pidfd without closing it: someone else (the orphanage) owns it now."""
        fd = self.pidfds.get(pid)
        if fd is None:
            return
        self._unpoll(pid, fd)
        self.pidfds.pop(pid, None)
        self._ids.pop(pid, None)

    def _unpoll(self, pid: int, fd: int) -> None:
        child = self.polled.get(fd)
        if child is not None and child._pid == pid:
            if pid not in self._closed:  # (closed: a replay, and the number may be another's)
                self._unregister(fd)
            child._polled = False
            self.polled.pop(fd, None)

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
            self._unpoll(child._pid, fd)

    # -- fork server exit fds -----------------------------------------------
    def add_served(self, child: Child, exit_fd: int) -> int:
        if exit_fd <= 2:
            exit_fd = above_stdio(exit_fd)
        self._closed.pop(-child._pid, None)  # (a stale mark of an earlier child with this pid)
        self._ids[-child._pid] = identify(exit_fd)
        self.served[exit_fd] = child
        self._epoll.register(exit_fd, select.EPOLLIN)
        return exit_fd

    def remove_served(self, child: Child) -> None:
        fd = child._exit_fd
        if fd is None:
            return
        key = -child._pid
        if self.served.get(fd) is child:
            if key not in self._closed:
                self._unregister(fd)
            del self.served[fd]
        self._close(key, fd)
        child._exit_fd = None  # (before the marks go: a replay must not close the number again)
        self._ids.pop(key, None)
        self._closed.pop(key, None)

    # -- checks -------------------------------------------------------------
    def verify(self, pids: Iterable[int]) -> None:
        """Check that the pidfds of ``pids`` are still ours; report those that are not."""
        for pid in pids:
            fd = self.pidfds.get(pid)
            identity = self._ids.get(pid)
            if fd is not None and identity is not None and fd_state(fd, identity) != OURS:
                self.forget_fd(pid)

    def forget_fd(self, pid: int) -> None:
        """``pid``'s pidfd was closed by someone else: drop it without closing, report it."""
        fd = self.pidfds.pop(pid, None)
        if fd is None:
            return
        child = self.polled.get(fd)
        if child is not None and child._pid == pid:
            child._polled = False
            del self.polled[fd]
        self._ids.pop(pid, None)
        self._report_lost(pid)

    def _report_lost(self, pid: int) -> None:
        if pid not in self.lost:
            self.lost.append(pid)

    def _unregister(self, fd: int) -> None:
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # (not registered, or the number names a file that is not: see the rules)

    def _close(self, key: int, fd: int) -> None:
        """Close ``fd`` (``key``'s) unless an earlier, interrupted call did, or it names
        another object now (then report it)."""
        if key in self._closed:
            return
        identity = self._ids.get(key)
        state = OURS if identity is None else fd_state(fd, identity)
        if state == OURS:
            self._closed[key] = fd  # the mark and the close: nothing runs between them
            try:
                os.close(fd)
            except OSError:
                pass
        elif state == OTHER:
            self._report_lost(abs(key))

    # -- teardown -----------------------------------------------------------
    def close(self) -> None:
        """Close every fd still ours (the pidfds left, exit fds, epoll, pipe)."""
        for pid in list(self.pidfds):
            self.close_pidfd(pid)
        for child in list(self.served.values()):
            self.remove_served(child)
        if not self._epoll.closed:
            if fd_state(self._epoll.fileno(), self._epoll_id) == OTHER:
                # Someone closed our epoll and its number names their file now. An epoll
                # object cannot let go of its fd: keep it for good, so that neither this
                # close nor its finaliser ever closes theirs.
                _STRANDED.append(self._epoll)
            else:
                self._epoll.close()
        self.waker.close()
        # Drop our reference: the write end closes with the waker's last one (a peek
        # thread may still hold it, and poke it, until its child dies).
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
        self.waker.forget()
