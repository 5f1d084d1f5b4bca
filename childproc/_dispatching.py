"""A context's dispatch cycle: reap what is ready, deliver it; now, or by waiting.

Rules of this file
------------------
* One cycle (:meth:`Dispatcher.pump`): reap what the context's fds say is ready
  into the journal and apply it (``Children.collect_locked``, under the process
  lock), run the due callbacks (:class:`~childproc._delivery.Delivery`), close
  the fds of children that are gone, then report pidfds someone else closed.
  ``dispatch()`` is one cycle; everything that waits is cycles between sleeps.
* A sleep is a poll of the context's epoll, never longer than
  :data:`RECHECK_S`: a wait that is woken by nothing still notices, that often,
  a closed context, a replaced handler or a pidfd someone closed.
* Who may wait where: in MAINLOOP the application reports exits, so a thread
  waiting for one needs another thread to report it; the thread that reports
  (:attr:`Dispatcher.reporter`, the last to report) is refused where it would
  wait forever, and a report pokes the waker so the waiting threads look again.
  Until a first report nobody knows which thread reports: the thread that chose
  the mode (:attr:`Dispatcher.suspect`) may wait, but an endless wait of its for
  a child that has exited and was not reported for :data:`REPORT_GRACE_S` raises
  :class:`StateError` (it is taken to be the one that must report). Any other
  wait for a report that is late logs a warning once (:data:`LATE_REPORT_S`).
* Every waiting thread is registered (:meth:`Dispatcher.add_waiter`) while it
  waits, so that ``close()`` can wake them and wait (a little) for them to leave.
* The context's entry check (``enter``: usable here, interrupted work replayed)
  runs at the start of every public call, and of every cycle of a child's wait;
  ``check_usable`` (not closed, not inherited) again under the process lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import _process
from ._errors import ClosedError, FdLostError, ForkedContextError, InvalidArgumentError, StateError
from ._policy import Reaper
from ._sigchld import HANDLER
from ._status import ChildEvent
from ._watchers._base import still_running

if TYPE_CHECKING:
    import resource

    from ._child import Child
    from ._children import Children
    from ._delivery import Delivery

__all__ = ["RECHECK_S", "Dispatcher", "check_report", "check_timeout"]

log = logging.getLogger("childproc")

#: The longest sleep of a wait: how often a blocked wait re-checks what it relies on.
RECHECK_S = 1.0
#: The longest sleep of a wait for one child: another thread may deliver its exit
#: while this one sleeps (see ``Dispatcher.wait_child``). A pipe of its own per wait
#: would wake it at once, but a Ctrl-C as it is made leaks the pipe.
CHILD_WAIT_TICK_S = 0.05
#: MAINLOOP: how long after a child's exit an endless wait on the thread that chose
#: the mode, before any thread reported, takes that thread to be the one that reports.
REPORT_GRACE_S = 2.0
#: MAINLOOP: how long after a child's exit a wait for its report logs that it is late.
LATE_REPORT_S = 10.0


def check_report(pid: object, status: object, rusage: object) -> None:
    """``childproc_reaped()``'s arguments checked: a pid, a wait status, and what
    ``os.wait4`` gives for rusage (or None)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise InvalidArgumentError(f"pid must be a positive int pid, not {pid!r}")
    if rusage is not None and not hasattr(rusage, "ru_utime"):
        raise InvalidArgumentError(
            f"rusage must be what os.wait4/os.wait3 return (a resource.struct_rusage), not {rusage!r}"
        )
    if not isinstance(status, int) or isinstance(status, bool) or not 0 <= status <= 0xFFFF:
        raise InvalidArgumentError(f"status must be a wait status (int 0..0xffff), not {status!r}")
    try:
        ChildEvent.from_wait_status(pid, status)
    except ValueError:
        raise InvalidArgumentError(
            f"status {status:#x} is not a wait status (exited, killed, stopped or continued)"
        ) from None


def check_timeout(timeout: object) -> float | None:
    """A ``timeout=`` argument checked; the deadline it sets (None: no limit)."""
    if timeout is None:
        return None
    try:
        if timeout is not True and timeout is not False and timeout >= 0:  # type: ignore[operator]
            return time.monotonic() + timeout  # type: ignore[operator]
    except TypeError:
        pass
    raise InvalidArgumentError(f"timeout must be None or a number >= 0, not {timeout!r}")


class Dispatcher:
    """Reaping and delivery for one context, now or by waiting (see the rules above)."""

    def __init__(
        self,
        kids: Children,
        delivery: Delivery,
        *,
        enter: Callable[[], None],
        check_usable: Callable[[], None],
        closed: Callable[[], bool],
    ) -> None:
        self._kids = kids
        self._delivery = delivery
        self._enter = enter
        self._check_usable = check_usable
        self._is_closed = closed
        self._fds_checked_at = time.monotonic()
        self._waiters: dict[object, int] = {}  # a waiting thread's token -> its ident
        self._waiters_cv = threading.Condition(threading.Lock())
        #: The dispatch thread, if one was started.
        self.thread: threading.Thread | None = None
        #: MAINLOOP: the thread that reports exits (the last to call childproc_reaped or
        #: sigchld_occurred; None before any did), which must not wait.
        self.reporter: ThreadId | None = None
        #: MAINLOOP, before any report: the thread that chose the mode, perhaps the one
        #: that will report (see the rules above).
        self.suspect = this_thread()

    # -- one cycle ------------------------------------------------------------
    def collect(self, ready: list[tuple[int, int]] | None = None) -> None:
        """Reap whatever the epoll says is ready (``ready``: what a poll just returned;
        None polls now), without blocking; apply the journal. Once a second on a quiet
        call, check that nobody closed our pidfds."""
        with _process.LOCK:
            if self._is_closed():  # closed by another thread since enter() checked
                raise ClosedError("this childproc Context is closed; create a new one")
            self._kids.collect_locked(ready)
        if not ready and time.monotonic() - self._fds_checked_at >= RECHECK_S:
            self.check_fds()

    def deliver(self) -> int:
        """Run the due callbacks; close the fds of children that are gone."""
        try:
            return self._delivery.deliver(self._is_closed)
        finally:
            self._kids.close_gone_fds()

    def report_lost_fds(self) -> None:
        """Raise :class:`FdLostError` once for pidfds someone else closed."""
        if not self._kids.wakeups.lost:
            return
        with _process.LOCK:
            lost = self._kids.wakeups.lost
            pids = list(lost)
            del lost[:]
        if pids:
            raise FdLostError(
                f"the pidfd childproc held for child(ren) {', '.join(map(str, pids))} was closed by "
                "someone else (the number may name another file now, which childproc leaves alone); "
                "childproc watches them by pid from now on. Do not close fds you did not open "
                "(closerange()/os.closerange in a host, a daemonize step).",
                pids,
            )

    def pump(self, ready: list[tuple[int, int]] | None = None) -> int:
        """One cycle: collect, deliver, report lost fds. Returns how many were delivered."""
        self.collect(ready)
        delivered = self.deliver()
        self.report_lost_fds()
        return delivered

    def check_fds(self) -> None:
        """A quiet tick: check that nobody closed our pidfds (their deaths would go unseen)."""
        self._fds_checked_at = time.monotonic()
        with _process.LOCK:
            if not self._is_closed():
                self._kids.check_fds_locked()

    def sleep(self, timeout: float) -> list[tuple[int, int]]:
        """Block until the epoll is readable or ``timeout`` (-1: forever) passed;
        return what the poll saw."""
        try:
            return self._kids.wakeups.poll(timeout)
        except ValueError:  # closed by another thread
            self._check_usable()
            raise

    # -- waiting --------------------------------------------------------------
    def add_waiter(self, token: object) -> None:
        """This thread waits from now on: ``close()`` wakes it and waits (a little)
        for it to leave, which it says with :meth:`remove_waiter` and the same token
        (in a ``finally`` whose ``try`` holds this call)."""
        self._waiters[token] = threading.get_ident()

    def remove_waiter(self, token: object) -> None:
        """This thread no longer waits (see :meth:`add_waiter`)."""
        self._waiters.pop(token, None)
        if self._is_closed():  # close() may be waiting for us
            with self._waiters_cv:
                self._waiters_cv.notify_all()

    def poke_waiters(self) -> None:
        """Something was delivered without them (a report): let waiting threads look."""
        if self._waiters:
            self._kids.wakeups.waker.poke()

    def outstanding(self) -> bool:
        """Something may still be delivered by waiting."""
        ledger = self._kids.ledger
        if ledger.running or ledger.next_event() is not None or self._kids.zombies:
            return True
        # Modes that reap every child: the host's children are delivered too.
        return self._kids.plan.rules.reaper is Reaper.ANY_CHILD and bool(_process.foreign_children())

    def wait(self, deadline: float | None) -> int:
        """``Context.wait``: cycles until one delivers, ``deadline`` passes, or nothing
        is outstanding."""
        token = object()
        try:
            self.add_waiter(token)
            self._enter()
            if self._kids.uses_handler():  # report a replaced handler now, not after a sleep
                with _process.LOCK:
                    HANDLER.check()
            while True:
                # Sleep first (anything already ready makes it return at once), then
                # dispatch: one dispatch per wake-up, not an idle one before each sleep.
                ready = None
                with _process.LOCK:
                    idle = self._kids.ledger.next_event() is None
                    if idle and not self.outstanding():
                        return 0
                if idle:
                    remaining = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
                    if remaining != 0 and self.reports_here():
                        self._refuse_a_wait_for_reports()
                    ready = self.sleep(RECHECK_S if remaining < 0 else min(remaining, RECHECK_S))
                if _process.CHORES:
                    _process.run_chores()
                delivered = self.pump(ready)
                if delivered:
                    return delivered
                if deadline is not None and time.monotonic() >= deadline:
                    return 0
        finally:
            self.remove_waiter(token)

    def _refuse_a_wait_for_reports(self) -> None:
        """``Context.wait`` on the thread that reports exits in MAINLOOP: unless a fork
        server's child may end it (its exit needs no report), it would wait for a
        report only this thread can make."""
        with _process.LOCK:
            children = list(self._kids.ledger.running.values())
        if all(child._exit_fd is None for child in children):
            raise StateError(
                f"waiting for the exits of {len(children)} child(ren) on the thread that reports exits "
                "in MAINLOOP (childproc_reaped, sigchld_occurred) would wait for reports only this "
                "thread can make: report the exits first (then wait(0) delivers what is left), or "
                "wait on another thread"
            )

    def wait_child(self, child: Child, timeout: float | None) -> ChildEvent | None:
        """Cycles until ``child``'s exit was delivered, by this thread or another (in
        MAINLOOP, the thread calling childproc_reaped pokes the waker)."""
        if timeout != 0 and not child.done and child._waits_for_report_here():
            raise StateError(
                f"waiting for child {child.pid}'s exit on the thread that reports exits in MAINLOOP "
                "(childproc_reaped, sigchld_occurred) would wait "
                f"{'for ever' if timeout is None else 'out its timeout'} for a report only this thread "
                "can make: wait on another thread, or report the exit first"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        token = object()
        report = self.report_watch(child, endless=deadline is None)
        try:
            self.add_waiter(token)
            while True:
                self._enter()
                self.pump()
                if child.done:
                    return child.final
                remaining = -1.0 if deadline is None else deadline - time.monotonic()
                if deadline is not None and remaining <= 0:
                    return None
                # The context's fd is shared with every thread that dispatches: one of
                # them (an event loop's reader, a host's loop) may take its wake-up and
                # deliver this child while this thread sleeps on. So it looks often.
                nap = CHILD_WAIT_TICK_S if remaining < 0 else min(remaining, CHILD_WAIT_TICK_S)
                if not self.sleep(nap) and report is not None:
                    report.check()
        finally:
            self.remove_waiter(token)

    def report_watch(self, child: Child, *, endless: bool) -> ReportWatch | None:
        """For a wait for ``child``'s exit: in MAINLOOP, what watches that its report
        comes (None elsewhere, and for a fork server's child, whose exit needs none)."""
        if not self._kids.plan.rules.app_reports or child._exit_fd is not None:
            return None
        return ReportWatch(self, child, endless=endless)

    def reports_here(self) -> bool:
        """MAINLOOP, and this thread is the one that reports exits: waiting here for
        an exit would wait forever."""
        return self._kids.plan.rules.app_reports and this_thread() == self.reporter

    def fd_to_dispatch(self) -> int | None:
        """The fd a thread waiting for a child's exit polls and then dispatches, or
        None where another thread dispatches (a dispatch thread; the application
        in MAINLOOP): the exit's delivery wakes the waiter then."""
        if self._kids.plan.rules.app_reports:
            return None
        thread = self.thread
        if thread is not None and thread.is_alive() and thread.ident != threading.get_ident():
            return None  # (on the dispatch thread itself, in a callback: nobody else would)
        self._check_usable()
        return self._kids.wakeups.fileno()

    def report_expected(self) -> tuple[ThreadId | None, ThreadId]:
        """MAINLOOP (again): nobody has reported yet, and this thread chose the mode.
        Returns what it replaced (for :meth:`restore_reporting`)."""
        old = (self.reporter, self.suspect)
        self.reporter, self.suspect = None, this_thread()
        return old

    def restore_reporting(self, old: tuple[ThreadId | None, ThreadId]) -> None:
        self.reporter, self.suspect = old

    # -- the dispatch thread --------------------------------------------------
    def start_thread(self) -> threading.Thread:
        if self.thread is not None and self.thread.is_alive():
            raise StateError("this context already has a dispatch thread")
        thread = threading.Thread(target=self._dispatch_forever, name="childproc-dispatch", daemon=True)
        self.thread = thread
        thread.start()
        return thread

    def _dispatch_forever(self) -> None:
        while not self._is_closed():
            try:
                if self.wait(time.monotonic() + RECHECK_S) == 0 and not self._is_closed():
                    self.sleep(RECHECK_S)  # nothing outstanding: idle, woken by any new child
            except (ClosedError, ForkedContextError):
                return
            except BaseException as exc:  # (a callback's SystemExit too: the thread goes on)
                if exc is not self._delivery.raised and not isinstance(exc, Exception):
                    raise
                if exc is self._delivery.raised or not self._is_closed():  # (a callback's, even if
                    log.exception("a childproc callback raised on the dispatch thread")  # closing)
                if self._is_closed():
                    return

    # -- what the application reports (MAINLOOP) --------------------------------
    def _require_app_reports(self, what: str) -> None:
        if not self._kids.plan.rules.app_reports:
            raise StateError(
                f"{what} is only for SigchldOwner.MAINLOOP, where the application reaps; this "
                f"context is in {self._kids.plan.mode.name} mode and reaps its children itself"
            )

    def reported(self, pid: int, status: int, rusage: resource.struct_rusage | None) -> bool:
        """The application reaped ``pid``: deliver it if it was ours."""
        self._require_app_reports("childproc_reaped()")
        self.reporter = this_thread()
        with _process.LOCK:
            self._check_usable()
            if not self._kids.reported_locked(pid, status, rusage):
                return False
        self.deliver()
        self.poke_waiters()  # a thread in child.wait() may be waiting for this one
        return True

    def sigchld_occurred(self) -> int:
        """The application saw a SIGCHLD: check each of our children, deliver."""
        self._require_app_reports("sigchld_occurred()")
        self.reporter = this_thread()
        with _process.LOCK:
            self._check_usable()
            self._kids.scan_locked()
        delivered = self.deliver()
        if delivered:
            self.poke_waiters()
        return delivered

    # -- teardown ---------------------------------------------------------------
    def stop(self) -> None:
        """The context is closing: end the dispatch thread and let the threads
        waiting in it leave (they raise :class:`ClosedError`), a few seconds at most.
        From a callback (of any context) it waits for neither: they may be waiting
        for this thread, and they leave on their own once they see the close."""
        if _process.delivering_here():
            return  # (a callback: the thread it delivers for, or a waiter, may wait for it)
        me = threading.get_ident()
        thread = self.thread
        if thread is not None and thread.ident != me:
            thread.join()
        with self._waiters_cv:
            self._waiters_cv.wait_for(lambda: all(t == me for t in list(self._waiters.values())), timeout=5.0)


#: A thread, as the MAINLOOP rules name it: its ident with its kernel id (an ident
#: alone is reused by the next thread as soon as one ends).
ThreadId = tuple[int, int]


def this_thread() -> ThreadId:
    return threading.get_ident(), threading.get_native_id()


class ReportWatch:
    """MAINLOOP: a wait for ``child``'s report, watching that the report comes once
    the child has exited (see the rules at the top)."""

    __slots__ = ("_child", "_dead_since", "_dispatcher", "_endless", "_warned")

    def __init__(self, dispatcher: Dispatcher, child: Child, *, endless: bool) -> None:
        self._dispatcher, self._child, self._endless = dispatcher, child, endless
        self._dead_since: float | None = None
        self._warned = False

    def check(self) -> None:
        """Called when a sleep found nothing: raise or warn if the report is late."""
        now = time.monotonic()
        if self._dead_since is None:
            if still_running(self._child) is False:
                self._dead_since = now
            return
        late = now - self._dead_since
        d, pid = self._dispatcher, self._child.pid
        suspect = d.reporter is None and this_thread() == d.suspect
        if self._endless and suspect and late > REPORT_GRACE_S:
            raise StateError(
                f"child {pid} exited {late:.0f} s ago and no thread has reported an exit yet, while "
                "this thread, the one that chose MAINLOOP, waits for it: if this thread is the one "
                "that reports (childproc_reaped, sigchld_occurred), it cannot do so while it waits; "
                "wait on another thread, or report first"
            )
        if late > LATE_REPORT_S and not self._warned:
            self._warned = True
            log.warning(
                "child %d exited %.0f s ago and its exit has not been reported: in MAINLOOP the "
                "application must reap it and call childproc_reaped(), or call sigchld_occurred()",
                pid,
                late,
            )
