"""A context's children: the one way a child comes in, what happens when one leaves.

:class:`Children` holds one context's parts (ledger, wake-ups, reaping,
watcher, plan) and does everything that touches a child record under the
process lock:

* :meth:`Children.start_locked`: the checks before a child is made, the start
  itself (through a :mod:`creator <childproc._creators>`) and its
  registration. The pid reaches ``starting`` from C; a registration is
  idempotent, so :meth:`Children.recover_locked` finishes one an interruption
  cut short.
* :meth:`Children.collect_locked`: reap what the epoll reported and apply the
  journal (:mod:`childproc._reaping`).
* :meth:`Children.gone_locked` when a child left (reaped, lost, released);
  its fds are closed later by :meth:`Children.close_gone_fds`, after its
  callback ran (closing releases the GIL; a callback should not wait for it).
* Signalling and releasing a handle.

It is what :data:`childproc._process.OWNERS` points at for each of its pids
(the :class:`~childproc._process.Owner` protocol). It never runs user code.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found, unused-ignore]
import errno
import itertools
import os
import signal
import threading
import weakref
from collections.abc import Callable
from typing import Any

from . import _process
from ._child import Child
from ._creators import Adopt, Creator, Fork
from ._errors import (
    AlreadyWatchedError,
    ChildExitedError,
    InvalidArgumentError,
    NotOurChildError,
    SigchldConflictError,
    SigchldIgnoredError,
    StateError,
)
from ._ledger import Ledger
from ._lifecycle import SIGNALLABLE, UNREAPED, Move, Phase, advance
from ._orphans import ORPHANAGE
from ._plan import Plan
from ._policy import Destination, Owner, Reaper, SigchldOwner
from ._reaping import Reaping
from ._sigchld import HANDLER, describe, on_main_thread
from ._traps import TRAPS, ignored_why
from ._trees import settle
from ._wakeups import Wakeups
from ._watchers import Watcher
from ._watchers._base import reap_zombie, still_running
from ._watchers.scan import scan

__all__ = ["Children"]

_READ_MASK = ((int(signal.SIG_BLOCK), ()),)
_SIGINT = (int(signal.SIGINT),)
_pthread_sigmask = _signal.pthread_sigmask  # signal.py's wrapper makes an enum of every signal


_PIDFD_SIGNAL_PROCESS_GROUP = 4  # <linux/pidfd.h>: signal the group whose id is the pidfd's pid
_PIDFD_GROUP = [True]  # the kernel takes that flag (until it says EINVAL)


def _disable_pidfd_group() -> None:
    _PIDFD_GROUP[0] = False


def _watch_in_thread(pid: int, poke: Callable[[], None]) -> None:
    """Last-resort wake-up for a child with no pidfd when nothing else would announce
    its death promptly: block in ``waitid(WNOWAIT)`` (peeks, never reaps), then poke."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        pass
    poke()


def refuse_ignored(mode: SigchldOwner, why: str, when: str) -> SigchldIgnoredError:
    """The error for a mode that cannot report exits because SIGCHLD is ignored."""
    message = TRAPS["sigchld-ignored"].error(f"{mode.name} mode {when}", why=ignored_why(why))
    return SigchldIgnoredError(message)


class Children:
    """See the module docstring."""

    def __init__(self, plan: Plan, watcher: Watcher) -> None:
        self.plan = plan
        self.watcher = watcher
        self.ledger: Ledger[Child] = Ledger()
        self.wakeups = Wakeups()
        #: pid -> why its status is lost, where not "stolen" (read when the loss is delivered).
        self.lost_why: dict[int, str] = {}
        self.reaping = Reaping(self, self.ledger, self.wakeups, gone=self.gone_locked, lost_why=self.lost_why)
        self.handler_key = object()  # who this context is to the SIGCHLD handler
        self.ref = weakref.ref(self)
        self.starting: list[list[Any]] = []  # [child, pid?]: starts not finished
        self.gone: list[Child] = []  # children whose fds await closing
        self.doomed: list[Child] = []  # SIGKILLed (kill_on_close), not reaped yet
        self.trees: list[Child] = []  # children whose cgroup (kill_tree=True) is not removed yet
        #: An interruption may have left work: :meth:`recover_locked` at the next entry.
        self.dirty = False

    # -- state --------------------------------------------------------------
    @property
    def zombies(self) -> dict[int, Child]:
        return self.reaping.zombies

    def uses_handler(self) -> bool:
        return HANDLER.uses(self.handler_key)

    def sync_handler_use_locked(self) -> None:
        """Be a user of the SIGCHLD handler, or not, as the plan says for the children
        now (a fork server's do not count: their exits come on exit fds)."""
        count = len(self.ledger.running) - len(self.wakeups.served)
        wanted = self.plan.wants_handler[(count > 0) * 2 + (len(self.reaping.stop_watchers) > 0)]
        if HANDLER.uses(self.handler_key) != wanted:
            HANDLER.set_user(self.handler_key, self.wakeups.waker.poke, wanted)

    def recover_locked(self) -> None:
        """Finish starts and apply journal entries an interruption left."""
        self.dirty = True
        for start in list(self.starting):
            if len(start) > 1 and type(start[1]) is int and start[1] > 0:
                self.register_locked(start[0], start[1])
            self.starting.remove(start)
        if self.reaping.journal or self.reaping.served_news or self.reaping.leaving:
            self.reaping.apply(self.plan, self.watcher)
        self.dirty = False

    # -- starting -----------------------------------------------------------
    def check_start_locked(self, creator: Creator, watches_stops: bool, adopt_pidfd: int | None) -> None:
        """Refuse a start that the mode, the process or SIGCHLD's disposition forbids;
        put the handler in place if the mode wants it for this child."""
        plan = self.plan
        mode = plan.mode
        if isinstance(creator, Adopt):
            self._check_adoptable_locked(creator.pid, adopt_pidfd)
        if plan.first_child_check and not self.ledger.running:
            self.refuse_foreign_children_locked(mode, creator.pid if isinstance(creator, Adopt) else None)
        if plan.wants_handler[2 + (watches_stops or len(self.reaping.stop_watchers) > 0)]:
            try:
                HANDLER.check()
                if not HANDLER.uses(self.handler_key):
                    HANDLER.set_user(self.handler_key, self.wakeups.waker.poke, True)
            except SigchldConflictError as exc:
                if not watches_stops or plan.wants_handler[2] or type(exc) is not SigchldConflictError:
                    raise
                # Only this child's stop events want the handler: say so, and the way out.
                raise SigchldConflictError(
                    f"stop/continue events (events with WSTOPPED or WCONTINUED) need childproc's own "
                    f"SIGCHLD handler, and SIGCHLD already has one: {describe(exc.handler)}, which "
                    f"childproc will not replace. Watch exits only (events=os.WEXITED, the default): "
                    f"{mode.name} works beside that handler",
                    exc.handler,
                ) from None
        why = HANDLER.discards_statuses(fresh=True)  # (an adopted child's status too)
        if why is not None:
            self.sync_handler_use_locked()
            raise refuse_ignored(
                mode,
                why,
                "leaves SIGCHLD's disposition alone"
                if plan.refuse_ignored_at_setmode
                else "could not put its handler in place before this child (not the main thread)",
            )

    def start_locked(
        self, creator: Creator, child: Child, call: Callable[[], int], adopt_pidfd: int | None
    ) -> bool:
        """Make the child (``call``) and register it; False in a forked child."""
        start: list[Any] = [child]
        self.starting.append(start)
        masks: list[Any] = []
        try:
            try:
                if isinstance(creator, Fork) and on_main_thread():
                    # SIGINT waits until the fork is over: a KeyboardInterrupt raised in
                    # an at-fork hook (logging's, say) would be swallowed by CPython.
                    # pthread_sigmask runs pending handlers after it changed the mask, so
                    # an interrupt already due is raised by the block call itself: the old
                    # mask is read first (a no-op change) and restored whatever happens.
                    masks.extend(itertools.starmap(_pthread_sigmask, _READ_MASK))
                    _pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
                start.extend(itertools.starmap(call, ((),)))  # the pid lands in start[1] from C
            except OSError as exc:
                raise creator.error(exc) from exc
            except (TypeError, ValueError) as exc:
                better = creator.refused(exc)  # (arguments refused before any child was made)
                if better is exc:
                    raise
                raise better from None
            finally:
                if masks:
                    _pthread_sigmask(signal.SIG_SETMASK, masks[0])
            if start[1] == 0:
                # A fork_replacement may have forked behind os.fork's at-fork hooks.
                _process.postfork_child_noexec()
                return False
            self.register_locked(child, creator.check_pid(start[1]), adopt_pidfd)
            self.starting.remove(start)
        except BaseException:
            self.recover_locked()
            self.sync_handler_use_locked()
            raise
        return True

    def refuse_foreign_children_locked(self, mode: SigchldOwner, except_pid: int | None = None) -> None:
        foreign = [p for p in _process.foreign_children() if p != except_pid and not ORPHANAGE.claims(p)]
        if foreign:
            raise StateError(
                TRAPS["foreign-children"].error(
                    f"{mode.name} mode reaps with waitpid(-1): it would reap them, and their owners "
                    "(subprocess, asyncio) would see returncode 0",
                    pids=", ".join(map(str, foreign[:10])),
                )
            )

    def _check_adoptable_locked(self, pid: int, pidfd: int | None) -> None:
        if pid in _process.OWNERS:
            raise AlreadyWatchedError(f"pid {pid} is already watched by a childproc context")
        flags = os.WEXITED | os.WSTOPPED | os.WCONTINUED | os.WNOHANG | os.WNOWAIT
        try:
            if pidfd is not None:
                os.waitid(os.P_PIDFD, pidfd, flags)
            else:
                os.waitid(os.P_PID, pid, flags)
        except ChildProcessError:
            raise NotOurChildError(
                f"pid {pid} is not a child of this process (or it was already reaped); only a "
                "process's own children can be watched and reaped"
            ) from None

    def register_locked(self, child: Child, pid: int, pidfd: int | None = None) -> None:
        """Make ``child`` (``pid``) watched. Idempotent: an interrupted registration
        is finished by calling it again."""
        child._pid = pid
        ref = _process.OWNERS.get(pid)
        other = ref() if ref is not None else None
        if other is not None and other is not self:
            # The kernel reused a pid whose death another context has not seen:
            # possible only if someone reaped it behind childproc's back.
            other.accept_gone(pid)
        self.ledger.add(pid, child)
        _process.OWNERS[pid] = self.ref
        plan = self.plan
        wakeups = self.wakeups
        if child._pidfd is None:
            if pidfd is not None:
                child._pidfd = wakeups.take_pidfd(pid, pidfd)
            elif plan.pidfds:
                child._pidfd = wakeups.open_pidfd(pid)
        if child._pidfd is not None and plan.pidfd_wakeups and not child._polled:
            wakeups.poll_pidfd(child)
        if child._watches_stops:
            self.reaping.stop_watchers.add(pid)
        self.watcher.add(child)
        if not child._polled and plan.pidfd_wakeups and not (HANDLER.installed and on_main_thread()):
            # Nothing would announce this death promptly: no pidfd, and either no
            # handler or one that waits for a (possibly blocked) main thread.
            self.start_peek_thread(pid)

    def watch_served_locked(self, child: Child, exit_fd: int | None, pidfd: int | None) -> None:
        """Watch a fork server's child (``child``, built by the caller): its exit comes
        on ``exit_fd``, signals go through ``pidfd`` (both now ours)."""
        assert exit_fd is not None
        if pidfd is not None:
            child._pidfd = self.wakeups.take_pidfd(child._pid, pidfd)
        child._exit_fd = self.wakeups.add_served(child, exit_fd)
        self.ledger.add(child._pid, child)

    def start_peek_thread(self, pid: int) -> None:
        threading.Thread(
            target=_watch_in_thread,
            args=(pid, self.wakeups.waker.poke),
            name=f"childproc-peek-{pid}",
            daemon=True,
        ).start()

    # -- leaving ------------------------------------------------------------
    def gone_locked(self, child: Child) -> None:
        """``child`` was reaped, lost or released: stop watching it. Its fds are closed
        after delivery (:meth:`close_gone_fds`)."""
        pid = child._pid
        self.watcher.remove(pid)
        self.reaping.zombies.pop(pid, None)
        if _process.OWNERS.get(pid) is self.ref:
            del _process.OWNERS[pid]
        self.reaping.stop_watchers.discard(pid)
        if child._pidfd is not None or child._exit_fd is not None or child._tree is not None:
            self.gone.append(child)

    def disown_all_locked(self) -> None:
        """The context is closed: no pid is its any more. (An interruption inside
        :meth:`gone_locked`, after the ledger forgot the child, left its entry.)"""
        owners = _process.OWNERS
        for pid in [pid for pid, ref in owners.items() if ref is self.ref]:
            del owners[pid]

    def close_gone_fds(self) -> None:
        """Close the fds of children that left (after their callbacks ran)."""
        if not self.gone:
            return
        with _process.LOCK:
            while True:
                if not self.gone:
                    break
                child = self.gone[0]
                if child._pidfd is not None:
                    self.wakeups.close_pidfd(child._pid)
                    child._pidfd = None
                if child._exit_fd is not None:
                    self.wakeups.remove_served(child)  # (clears child._exit_fd)
                if child._tree is not None:
                    settle(child._tree, kill=False)  # its cgroup, if nothing is left in it
                    if getattr(child._tree, "removed", False) and child in self.trees:
                        self.trees.remove(child)
                del self.gone[0]

    def settle_trees(self) -> None:
        """At close: the cgroups of children that left, killing what is left in the
        trees of ``kill_on_close`` children and removing each cgroup once empty
        (one that still holds processes is left for a later sweep)."""
        for child in list(self.trees):
            settle(child._tree, kill=child.kill_on_close)
            self.trees.remove(child)

    def reap_zombie(self, child: Child) -> None:
        """Reap a child whose exit callback ran while it was a zombie."""
        with _process.LOCK:
            if self.reaping.zombies.get(child._pid) is not child:
                return
            reap_zombie(child)
            if child.phase is Phase.REAP_DUE:
                child.phase = advance(child.phase, Move.REAP)
            self.gone_locked(child)
            self.sync_handler_use_locked()

    def reap_leftover_zombies(self) -> None:
        if self.reaping.zombies:
            with _process.LOCK:
                due = list(c for c in self.reaping.zombies.values() if c.phase is Phase.REAP_DUE)
            for child in due:
                self.reap_zombie(child)

    # -- what other contexts call (the Owner protocol) ----------------------
    def accept_reaped(self, pid: int, status: int, uid: int | None, rusage: object = None) -> None:
        """Another context reaped our ``pid`` (``waitpid(-1)``). LOCK held."""
        self.reaping.accept_exit(pid, status, uid, rusage)  # type: ignore[arg-type]
        self.sync_handler_use_locked()
        self.wakeups.waker.poke()

    def accept_gone(self, pid: int) -> None:
        """Our ``pid`` was found reaped by someone else. LOCK held."""
        self.reaping.accept_gone(pid)
        self.wakeups.waker.poke()

    # -- reaping ------------------------------------------------------------
    def collect_locked(self, ready: list[tuple[int, int]] | None) -> None:
        """Reap whatever the epoll says is ready, without blocking; apply the journal.

        ``ready``: what a ``poll`` of the epoll just returned; None polls now. With
        the SIGCHLD handler in use it polls again all the same: the handler pokes
        the self-pipe just after the poll that saw a child's pidfd (it runs between
        bytecodes), and taking both now saves a whole empty round later. The
        handler check comes first, so a raise never swallows a wake-up.
        """
        self.dirty = True
        if HANDLER.uses(self.handler_key):
            HANDLER.check()
            ready = self.wakeups.poll(0)
        elif ready is None:
            ready = self.wakeups.poll(0)
        self.reaping.collect(self.watcher, ready)
        self.reaping.apply(self.plan, self.watcher)
        self.sync_handler_use_locked()
        self.dirty = False

    # -- MAINLOOP: the application reaps ------------------------------------
    def reported_locked(self, pid: int, status: int, rusage: Any = None) -> bool:
        """The application reaped ``pid`` with wait status ``status`` (and ``rusage``,
        if it had it): record it if it is ours (False if not: another context's, or
        nobody's)."""
        ref = _process.OWNERS.get(pid)
        owner = Owner.NOBODY if ref is None else Owner.OTHER_CONTEXT
        if ref is self.ref:
            owner = Owner.THIS_CONTEXT
        if self.plan.route[owner] is not Destination.CHILD_CALLBACK or self.ledger.handle(pid) is None:
            return False
        if os.WIFSTOPPED(status) or os.WIFCONTINUED(status):
            self.ledger.changed(pid, status, None)
        else:
            self._refuse_if_running(pid)
            self.reaping.accept_exit(pid, status, None, rusage)
        self.sync_handler_use_locked()
        return True

    def _refuse_if_running(self, pid: int) -> None:
        """An exit reported for a child whose pidfd says it still runs (a wrong pid, a
        report before the reap) would lose that child for good: refuse it."""
        child = self.ledger.handle(pid)  # (through its pidfd only: a pid may name another by now)
        if child is not None and child._pidfd is not None and still_running(child):
            raise InvalidArgumentError(
                f"childproc_reaped({pid}, ...) reports an exit, but child {pid} is still running "
                "(its pidfd says so): report a pid once waitpid() has returned it"
            )

    def scan_locked(self) -> None:
        """Check each running child (``waitid(P_PID, WNOHANG)``) and record what changed."""
        self.dirty = True
        scan(self.ledger.running_handles(), self.reaping.journal)
        self.reaping.apply(self.plan, self.watcher)
        self.dirty = False

    def check_fds_locked(self) -> None:
        """Check that nobody closed our pidfds (their deaths would go unseen); watch
        those someone did by pid, and let :attr:`Wakeups.lost` report them."""
        before = len(self.wakeups.lost)
        self.wakeups.verify(list(self.ledger.running))
        for pid in self.wakeups.lost[before:]:
            child = self.ledger.handle(pid)
            if child is not None:
                child._pidfd = None
                self.watcher.add(child)
                self.start_peek_thread(pid)

    # -- handles ------------------------------------------------------------
    def signal(self, child: Child, sig: int) -> None:
        """Send ``sig`` to ``child``, never to a recycled pid. LOCK held."""
        if self.dirty:
            self.recover_locked()  # (a reap an interruption left unapplied: the phase first)
        if child.phase not in SIGNALLABLE:
            raise ChildExitedError(
                f"child {child._pid} has exited (or was released); not signalling a pid that "
                "may now name another process"
            )
        if child._pidfd is not None:
            try:
                signal.pidfd_send_signal(child._pidfd, sig)
            except ProcessLookupError:
                raise ChildExitedError(f"child {child._pid} has exited") from None
            return
        if child._exit_fd is not None:
            raise StateError(
                f"cannot signal child {child._pid} safely: a fork server made it and there is no pidfd for it"
            )
        if self.plan.rules.reaper is Reaper.APPLICATION:
            raise StateError(
                f"cannot signal child {child._pid} safely: there is no pidfd for it, and in "
                "MAINLOOP the application reaps, so its pid may already name another process"
            )
        # Unreaped, and only childproc reaps it (the mode's promise): the pid is still its.
        os.kill(child._pid, sig)

    def signal_group(self, child: Child, sig: int) -> None:
        """Send ``sig`` to the process group ``child`` leads, only while ``child`` is
        unreaped: its zombie keeps the group id from being reused, and only
        childproc reaps it (see childproc._trees). LOCK held."""
        if self.dirty:
            self.recover_locked()  # (a reap an interruption left unapplied: the phase first)
        if not child._leads_group:
            raise StateError(
                f"child {child._pid} does not lead a process group of its own: start it with "
                "process_group=0 or start_new_session=True"
            )
        if self.plan.rules.reaper is Reaper.APPLICATION:
            raise StateError(
                f"cannot signal child {child._pid}'s process group safely: in MAINLOOP the "
                "application reaps, so the group id may already name another group"
            )
        if child.phase not in UNREAPED:
            raise ChildExitedError(
                f"child {child._pid} has exited and been reaped: its process group id may now "
                "name another group, so it is not signalled (a cgroup tree, kill_tree=True where "
                "this process may make cgroups, reaches descendants after that)"
            )
        try:
            if child._pidfd is not None and _PIDFD_GROUP[0]:
                try:  # the group led by the pidfd's pid: never a recycled number's (Linux 6.9+)
                    signal.pidfd_send_signal(child._pidfd, sig, None, _PIDFD_SIGNAL_PROCESS_GROUP)
                    return
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    _disable_pidfd_group()  # an older kernel: by group id, under the rule above
            os.killpg(child._pid, sig)
        except ProcessLookupError:
            # The group is empty: the leader left it (setpgid) and so did the rest. The
            # leader is still ours (unreaped): it alone gets the signal.
            self.signal(child, sig)
