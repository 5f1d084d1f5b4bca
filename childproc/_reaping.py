"""Reaping and routing: from "something is ready" to the right ledger, for one context.

How a death travels through here
--------------------------------
1. :meth:`Reaping.collect` reads what the context's epoll reported: its
   self-pipe (SIGCHLD, another thread), readable pidfds, fork-server exit fds.
2. The watcher (:mod:`childproc._watchers`) reaps into the context's journal
   (:class:`~childproc._watchers.Reaped`), every result stored from C.
3. :meth:`Reaping.apply` takes the journal's entries in order. A child reaped
   through its own pidfd (or pid) goes straight into our ledger: the reap named
   it, and :func:`childproc._policy.route` sends a context's own child to its
   callback in every mode. A pid ``waitid(P_ALL)`` reaped goes where ``route``
   says (through the plan): ours into our ledger, another context's to that
   context, an orphan's to the orphanage, a stranger's to ``reaped_callback``
   or a warning. Each entry
   is removed only once applied, and applying one again changes nothing (the
   lifecycle table), so an interruption anywhere loses nothing.

A self-pipe wake-up is remembered (``signal_pending``) before the pipe is
drained and forgotten only after the watcher ran, for the same reason.
The caller holds the process lock around every method here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from . import _process
from ._forkserver_wire import EXIT_EVENT
from ._ledger import EventKind, Ledger
from ._lifecycle import Phase
from ._orphans import ORPHANAGE
from ._policy import Destination, Owner
from ._sigchld import HANDLER
from ._traps import TRAPS, ignored_why
from ._trees import log_returned
from ._watchers import Reaped, Watcher
from ._watchers._base import Rusaged, found_from_waitid

if TYPE_CHECKING:
    import resource

    from ._child import Child
    from ._plan import Plan
    from ._wakeups import Wakeups

__all__ = ["Reaping"]


class Reaping:
    """One context's reaping: its watcher, its journal and the routing of what they find."""

    def __init__(
        self,
        owner: _process.Owner,
        ledger: Ledger[Child],
        wakeups: Wakeups,
        *,
        gone: Callable[[Child], None],
        lost_why: dict[int, str],
    ) -> None:
        self._self = owner
        self._ledger = ledger
        self._wakeups = wakeups
        self._child_gone = gone  # the context's bookkeeping for a child that left
        self._lost_why = lost_why
        self.journal = Reaped()
        #: Exit records read from fork servers' exit fds: (child, bytes), stored from C.
        self.served_news: list[tuple[Child, bytes]] = []
        #: The self-pipe was poked and the watcher has not run since.
        self.signal_pending = False
        #: Zombies: exit peeked at (``reap_after_callback``), reaped after delivery.
        self.zombies: dict[int, Child] = {}
        #: pids of children that watch stop/continue (these need SIGCHLD).
        self.stop_watchers: set[int] = set()
        #: Children whose death is being recorded: set before the ledger's commit and
        #: dropped after the bookkeeping, so a replay finds them (the commit takes
        #: them out of ``running``) and finishes the bookkeeping.
        self.leaving: dict[int, Child] = {}
        #: The exit being routed and whose it was: (journal entry, owner). A replay of
        #: the same entry goes to the same owner, whatever the bookkeeping already
        #: removed from OWNERS.
        self._routing: tuple[object, object] | None = None

    # -- finding ------------------------------------------------------------
    def collect(self, watcher: Watcher, ready: list[tuple[int, int]]) -> None:
        """Reap whatever ``ready`` (an epoll poll's result) points at, into the journal."""
        wakeups = self._wakeups
        rfd = wakeups.waker.rfd
        polled = wakeups.polled
        served = wakeups.served
        woken: list[Child] = []
        for fd, _ in ready:
            if fd == rfd:
                self.signal_pending = True
            elif fd in served:
                self._read_served(served[fd], fd)
            else:
                child = polled.get(fd)
                if child is not None:
                    woken.append(child)
        if self.signal_pending:
            wakeups.waker.drain()
        if self.signal_pending or woken:
            watcher.reap(woken, self.signal_pending, self.journal)
            self.signal_pending = False

    def _read_served(self, child: Child, fd: int) -> None:
        try:
            os.set_blocking(fd, False)
            self.served_news.extend(zip((child,), map(os.read, (fd,), (EXIT_EVENT.size,)), strict=True))
        except BlockingIOError:
            pass

    def read_served_blocking(self, child: Child, fd: int) -> None:
        os.set_blocking(fd, True)
        self.served_news.extend(zip((child,), map(os.read, (fd,), (EXIT_EVENT.size,)), strict=True))

    # -- applying -----------------------------------------------------------
    def apply(self, plan: Plan, watcher: Watcher) -> None:
        """Apply the journal, oldest first; each entry is removed once applied."""
        j = self.journal
        ledger = self._ledger
        while j.changed:
            info = j.changed[0]
            if info is not None:
                pid, status, uid = found_from_waitid(info)
                child = ledger.handle(pid)
                if child is not None:
                    wanted = bool(child.events & (os.WSTOPPED if os.WIFSTOPPED(status) else os.WCONTINUED))
                    report = wanted and child._watches_stops
                    if ledger.changed(pid, status, uid, news=info, report=report) and report:
                        self._after_change(child, watcher)
            j.changed.popleft()
        while j.peeked:
            info = j.peeked[0]
            if info is not None:
                pid, status, uid = found_from_waitid(info)
                child = ledger.handle(pid) or self.zombies.get(pid)
                if child is not None:
                    child._status, child._uid = status, uid
                    self.zombies[pid] = child  # (before the commit: a replay finds it here)
                    ledger.peeked(pid, status, uid)
                    self._wakeups.unpoll(child)  # a zombie's pidfd stays readable
            j.peeked.popleft()
        while j.own:
            reaped, peek, (_, status, rusage) = j.own[0]  # (a reap of one of our Child records)
            self._accept(cast("Child", reaped), status, peek.si_uid, rusage)
            j.own.popleft()
        while j.exited:
            reaped_any = j.exited[0]
            if reaped_any is not None:
                self._route(plan, reaped_any)
            j.exited.popleft()
            self._routing = None
        if j.returned:
            j.returned.clear()
        # ECHILD: stolen, where nobody else may reap (in MAINLOOP the application may
        # have reaped it and report it yet), or where the kernel discards statuses now.
        stolen = bool(j.gone) and (
            plan.echild_means_stolen or HANDLER.discards_statuses(fresh=True) is not None
        )
        while j.gone:
            if stolen:
                self.accept_gone(j.gone[0])
            j.gone.popleft()
        while j.fd_lost:
            pid = j.fd_lost[0]
            self._wakeups.forget_fd(pid)
            child = ledger.handle(pid)
            if child is not None:
                child._pidfd = None
                watcher.add(child)  # watched by pid from now on
            j.fd_lost.popleft()
        while self.served_news:
            child, data = self.served_news[0]
            self._served_exit(child, data)
            del self.served_news[0]
        for pid, child in list(self.leaving.items()):  # bookkeeping an interruption cut short
            if child.phase not in (Phase.RUNNING, Phase.STOPPED):  # (not yet recorded: its
                self._child_gone(child)  # journal entry, wherever it is, still comes)
                self.leaving.pop(pid, None)

    def _after_change(self, child: Child, watcher: Watcher) -> None:
        if child.oneshot and child._watches_stops:
            child._watches_stops = False
            self.stop_watchers.discard(child._pid)
            watcher.add(child)

    def _route(self, plan: Plan, info: tuple[os.waitid_result, Rusaged]) -> None:
        peek, (pid, status, rusage) = info
        uid = peek.si_uid
        routing = self._routing
        if routing is not None and routing[0] is info:
            owner: object = routing[1]  # a replay: the owner it was routed to before
        elif pid in self.leaving:
            owner = self._self
        elif ORPHANAGE.claims(pid):
            owner = ORPHANAGE
        else:
            owner = _process.owner_of(pid)
            if owner is None and pid in self.journal.returned:
                owner = Owner.RETURNED
        self._routing = (info, owner)
        self.journal.returned.discard(pid)
        if owner is ORPHANAGE:
            ORPHANAGE.accept_reaped(pid, status, uid)
            return
        if owner is self._self:
            dest = plan.route[Owner.THIS_CONTEXT]
        elif owner is Owner.RETURNED:
            dest = plan.route[Owner.RETURNED]
        elif owner is not None:
            dest = plan.route[Owner.OTHER_CONTEXT]
        else:
            dest = plan.route[Owner.NOBODY]
        if dest is Destination.CHILD_CALLBACK:
            self.accept_exit(pid, status, uid, rusage)
        elif dest is Destination.OTHER_CONTEXT:
            cast(_process.Owner, owner).accept_reaped(pid, status, uid, rusage)
        elif dest is Destination.REAPED_CALLBACK:
            self._ledger.foreign(pid, status, EventKind.FOREIGN, uid, news=info)
        elif dest is Destination.WARNING:
            self._ledger.foreign(pid, status, EventKind.UNKNOWN, uid, news=info)
        elif dest is Destination.DROPPED:
            log_returned(pid, status)
        else:  # the watcher reaped what this mode never reaps: a bug upstream
            raise AssertionError(f"{plan.mode.name} reaped pid {pid}, which it cannot route ({dest})")

    def accept_exit(
        self, pid: int, status: int, uid: int | None, rusage: resource.struct_rusage | None = None
    ) -> None:
        """``pid`` (ours) was reaped with ``status`` (and ``rusage``, where known).
        Safe to replay."""
        child = self._ledger.handle(pid) or self.zombies.get(pid) or self.leaving.get(pid)
        if child is not None:
            self._accept(child, status, uid, rusage)

    def _accept(
        self, child: Child, status: int, uid: int | None, rusage: resource.struct_rusage | None = None
    ) -> None:
        """``child`` was reaped with ``status`` (a reap through its own pidfd or pid
        needs no routing: the route of a context's own child is always its
        callback). Safe to replay."""
        pid = child._pid
        known = self._ledger.handle(pid) or self.leaving.get(pid) or self.zombies.get(pid)
        if known is not child:
            return  # released meanwhile, or the bookkeeping is done (a replay)
        self.leaving[pid] = child
        if child.phase in (Phase.RUNNING, Phase.STOPPED):
            child._status, child._uid, child._rusage = status, uid, rusage
        self._ledger.exited(pid, status, uid)
        self._child_gone(child)
        self.leaving.pop(pid, None)

    def accept_gone(self, pid: int) -> None:
        """``pid`` (ours) was gone (``ECHILD``): someone, or the kernel, reaped it.
        Safe to replay."""
        child = self._ledger.handle(pid) or self.leaving.get(pid)
        if child is None:
            return
        self.leaving[pid] = child
        why = HANDLER.discards_statuses(fresh=True)
        if why is not None and pid not in self._lost_why:
            self._lost_why[pid] = TRAPS["sigchld-ignored"].error(
                f"child {pid}'s exit status was discarded: SIGCHLD became so after the child started",
                why=ignored_why(why),
            )
        self._ledger.stolen(pid)
        self._child_gone(child)
        self.leaving.pop(pid, None)

    def _served_exit(self, child: Child, data: bytes) -> None:
        if len(data) == EXIT_EVENT.size:
            _, status = EXIT_EVENT.unpack(data)
            self.accept_exit(child._pid, status, None)
            return
        # The server went away before the child: its status is lost (it may run on).
        child._runs_on = True
        self.leaving[child._pid] = child
        if child.phase in (Phase.RUNNING, Phase.STOPPED) and child._pid not in self._lost_why:
            self._lost_why[child._pid] = (
                f"the fork server that made child {child._pid} stopped (stop_server_only) or died "
                "before the child exited, so nobody can report its exit status"
            )
        self._ledger.stolen(child._pid)
        self._child_gone(child)
        self.leaving.pop(child._pid, None)
