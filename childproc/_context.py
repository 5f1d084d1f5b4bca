"""The Context: fork children, learn exactly once when each dies.

How a death travels
-------------------
1. ``child_fork`` forks with the process lock held and registers the pid
   (ledger, ``OWNERS``, watcher, pidfd in the context's epoll) before the lock
   is released, so no reaper anywhere in the process can take the pid unseen.
2. The child dies. The kernel makes its pidfd readable and sends SIGCHLD; the
   process-wide handler pokes the self-pipe of every context that uses it.
   Either makes the context's epoll (``fileno()``) readable, on any thread,
   even while the main thread is blocked in C.
3. ``dispatch()`` (or ``wait()``) drains the pipe, asks the watcher to reap,
   and routes every reaped pid through :func:`childproc._policy.route`: ours
   into our ledger, another context's into its ledger (and pokes it), a
   foreign pid to ``reaped_callback`` or a warning.
4. Delivery pops one event at a time and runs its callback with no lock held
   but the context's delivery lock (so callbacks run one at a time, in order,
   and may call back into the context). A popped event is delivered; if its
   callback raises, the rest stay queued and the exception propagates.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _process
from ._errors import (
    ChildStolenError,
    ClosedError,
    ForkedContextError,
    ForkError,
    InvalidArgumentError,
    StateError,
)
from ._ledger import ChildCallback, Event, EventKind, Ledger
from ._policy import (
    Destination,
    Owner,
    Reaper,
    SigchldOwner,
    choose_watcher,
    route,
    rules_for,
    wants_handler,
)
from ._status import describe_status
from ._watchers import Reaped, Watcher, make_watcher
from ._watchers import pidfd as _pidfd
from ._watchers.scan import scan

__all__ = ["Hooks", "Context", "ForkReplacement", "ReapedCallback"]

log = logging.getLogger("childproc")

#: ``fork_replacement(user) -> pid``: called instead of ``os.fork()``.
ForkReplacement = Callable[[Any], int]
#: ``reaped_callback(pid, status, user) -> bool | None`` for pids nobody in childproc made.
ReapedCallback = Callable[[int, int, Any], bool | None]

_HANDLER_RECHECK_S = 1.0  # how often a blocked wait() re-checks a handler it relies on


@dataclass(frozen=True)
class Hooks:
    """How a context shares child processes with its host (libxl's ``libxl_childproc_hooks``).

    ``chldowner``
        Who owns SIGCHLD and reaping: a :class:`SigchldOwner`.
    ``fork_replacement``
        Called as ``fork_replacement(user)`` instead of ``os.fork()``; must behave
        like it (pid in the parent, 0 in the child, ``OSError`` on failure) and
        must not call back into childproc.
    ``reaped_callback``
        LIBXL and LIBXL_ALWAYS only: called as ``reaped_callback(pid, status, user)``
        for each reaped pid that no childproc context made. Return True or None
        if the application knows the pid, False if not (then a warning is logged).
        Runs from ``dispatch()``/``wait()``, never from a signal handler.
    """

    chldowner: SigchldOwner = SigchldOwner.LIBXL
    fork_replacement: ForkReplacement | None = None
    reaped_callback: ReapedCallback | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.chldowner, SigchldOwner):
            raise InvalidArgumentError(
                f"Hooks.chldowner must be a SigchldOwner (e.g. SigchldOwner.MAINLOOP), not {self.chldowner!r}"
            )
        for name in ("fork_replacement", "reaped_callback"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise InvalidArgumentError(f"Hooks.{name} must be callable or None, not {value!r}")
        if self.reaped_callback is not None and not rules_for(self.chldowner).takes_reaped_callback:
            raise InvalidArgumentError(
                f"Hooks.reaped_callback is only used in LIBXL and LIBXL_ALWAYS, where the library "
                f"reaps children it did not make; {self.chldowner.name} never does"
            )


class _Waker:
    """A context's self-pipe: non-blocking, close-on-exec, a boolean "look at me".

    The write end is closed when the last reference goes (the SIGCHLD handler
    holds one while it pokes), so a poke can never hit a recycled fd number.
    """

    __slots__ = ("rfd", "wfd")

    def __init__(self) -> None:
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def poke(self) -> None:
        try:
            os.write(self.wfd, b"\0")
        except OSError:
            pass  # EAGAIN: already readable, which is all a poke means

    def drain(self) -> bool:
        got = False
        while True:
            try:
                data = os.read(self.rfd, 512)
            except BlockingIOError:
                return got
            except OSError:
                return got
            if not data:
                return got
            got = True
            if len(data) < 512:
                return got

    def close_read(self) -> None:
        if self.rfd >= 0:
            os.close(self.rfd)
            self.rfd = -1

    def close_write(self) -> None:
        if self.wfd >= 0:
            os.close(self.wfd)
            self.wfd = -1

    def __del__(self) -> None:
        try:
            self.close_read()
            self.close_write()
        except OSError:  # pragma: no cover
            pass


class _ClosedWaker(_Waker):
    """Stands in for a closed context's waker: no fds, pokes do nothing."""

    def __init__(self) -> None:
        self.rfd = self.wfd = -1

    def poke(self) -> None:
        pass


_CLOSED_WAKER = _ClosedWaker()


def _validate_pid(pid: object, what: str) -> int:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise InvalidArgumentError(f"{what} must be a positive int pid, not {pid!r}")
    return pid


def _watch_in_thread(pid: int, waker: _Waker) -> None:
    """Last-resort wake-up: block in waitid(WNOWAIT) on one pid, then poke.

    Used only for a child with no pidfd (unsupported, or fds exhausted) that was
    forked on a worker thread: then either no handler is installed yet, or the
    Python-level handler runs only when the main thread gets to it, which may be
    blocked in C for seconds. WNOWAIT peeks without reaping, so the mode's own
    reaper still reaps.
    """
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        pass
    waker.poke()


class Context:
    """A set of children and the machinery to learn, exactly once, when each dies.

    Thread safety: every method may be called from any thread. ``setmode`` and
    the first ``child_fork`` of a mode that needs the SIGCHLD handler should be
    called on the main thread (``signal.signal`` works only there); on another
    thread the handler is installed by the next childproc call on the main
    thread, and children forked meanwhile are watched through their pidfds.

    Callbacks run from :meth:`dispatch`, :meth:`wait`, :meth:`childproc_reaped`
    or :meth:`sigchld_occurred`, or on the dispatch thread if one was started
    with :meth:`start_dispatch_thread`, never from a signal handler.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._closed = False
        self._forked = False
        self._hooks = Hooks()
        self._user: Any = None
        self._rules = rules_for(self._hooks.chldowner)
        self._ledger = Ledger()
        self._waker = _Waker()
        try:
            self._epoll = select.epoll()
            self._epoll.register(self._waker.rfd, select.EPOLLIN)
        except BaseException:
            self._waker.close_read()
            self._waker.close_write()
            raise
        self._pidfds: dict[int, int] = {}  # pid -> pidfd
        self._fd_pid: dict[int, int] = {}  # pidfd -> pid
        self._watcher: Watcher = make_watcher(choose_watcher(self.mode, _pidfd.supported()))
        self._delivery = threading.RLock()
        self._waiters_cv = threading.Condition(threading.Lock())
        self._waiters: dict[int, int] = {}  # thread ident -> nesting depth in wait()
        self._thread: threading.Thread | None = None
        _process.register_context(self)

    # -- small helpers ------------------------------------------------------
    @property
    def mode(self) -> SigchldOwner:
        """The current :class:`SigchldOwner`."""
        return self._hooks.chldowner

    @property
    def hooks(self) -> Hooks:
        """The :class:`Hooks` given to :meth:`setmode` (``Hooks()`` until then)."""
        return self._hooks

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or the context was inherited and closed)."""
        return self._closed

    @property
    def children(self) -> frozenset[int]:
        """Pids this context made whose exit has not been delivered yet (a snapshot)."""
        with _process.LOCK:
            return self._ledger.outstanding()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._ledger.running_pids())} running"
        return f"<childproc.Context {self.mode.name} {state}>"

    def _check_usable(self) -> None:
        if self._forked or self._pid != os.getpid():
            raise ForkedContextError(
                "this childproc Context was inherited through fork() and belongs to the parent; "
                "create a new Context in the child"
            )
        if self._closed:
            raise ClosedError("this childproc Context is closed; create a new one")

    def _enter(self) -> None:
        self._check_usable()
        _process.run_chores()

    def _uses_handler(self) -> bool:
        return wants_handler(self.mode, self._ledger.unreaped)

    # -- configuration ------------------------------------------------------
    def setmode(self, hooks: Hooks | None = None, user: Any = None) -> None:
        """Choose who owns SIGCHLD (libxl's ``libxl_childproc_setmode``).

        ``hooks=None`` means ``Hooks()`` (LIBXL mode). ``user`` is passed to the
        hooks. Allowed only while the context has no outstanding children and no
        undelivered events. In LIBXL_ALWAYS and SELECTIVE_REAP the SIGCHLD handler
        is installed now (on the main thread; elsewhere at the next main-thread call).

        Raises :class:`StateError` with children outstanding,
        :class:`SigchldConflictError` if the mode needs the handler and a foreign
        SIGCHLD handler is installed, :class:`InvalidArgumentError` for bad hooks.
        """
        if hooks is None:
            hooks = Hooks()
        if not isinstance(hooks, Hooks):
            raise InvalidArgumentError(f"setmode() takes a childproc.Hooks, not {hooks!r}")
        self._enter()
        with _process.LOCK:
            self._check_usable()
            if self._ledger.unreaped or self._ledger.has_events:
                raise StateError(
                    "setmode() while this context has children outstanding or events undelivered; "
                    "call setmode() before the first child_fork(), or after every child's callback ran"
                )
            old_hooks, old_user, old_rules, old_watcher = (
                self._hooks,
                self._user,
                self._rules,
                self._watcher,
            )
            self._hooks, self._user = hooks, user
            self._rules = rules_for(hooks.chldowner)
            self._watcher = make_watcher(choose_watcher(hooks.chldowner, _pidfd.supported()))
            try:
                _process.set_handler_user(self, self._uses_handler())
            except BaseException:
                self._hooks, self._user, self._rules, self._watcher = (
                    old_hooks,
                    old_user,
                    old_rules,
                    old_watcher,
                )
                raise

    # -- forking ------------------------------------------------------------
    def child_fork(self, callback: ChildCallback) -> int:
        """Fork; return the child's pid in the parent and 0 in the child.

        ``callback(pid, status)`` runs exactly once, after the child was reaped,
        with the wait status (decode with ``os.waitstatus_to_exitcode`` or
        :func:`childproc.describe_status`). It runs from :meth:`dispatch` or
        :meth:`wait` (in MAINLOOP from :meth:`childproc_reaped` itself).

        The child should exec or ``os._exit`` soon; it must not use this context
        (it raises :class:`ForkedContextError` there).

        Raises :class:`ForkError` (with ``errno``) if the fork fails, leaving no
        registry entry and no handler installed only for this child;
        :class:`SigchldConflictError` before forking if the mode needs the
        SIGCHLD handler and someone else's is installed.

        From a worker thread, when the handler is not installed yet, the child's
        death is seen through its pidfd (or, lacking one, a thread blocked in
        ``waitid(WNOWAIT)``), and the handler is installed by the next childproc
        call on the main thread.
        """
        if not callable(callback):
            raise InvalidArgumentError(
                f"child_fork() needs a callable callback(pid, status), not {callback!r}"
            )
        self._enter()
        with _process.LOCK:
            self._check_usable()
            needs_handler = wants_handler(self.mode, self._ledger.unreaped + 1)
            if needs_handler:
                _process.check_handler()
                _process.set_handler_user(self, True)
            try:
                pid = self._fork()
            except OSError as exc:
                _process.set_handler_user(self, self._uses_handler())
                raise ForkError(exc.errno or errno.EAGAIN, f"fork failed: {exc.strerror or exc}") from exc
            except BaseException:
                _process.set_handler_user(self, self._uses_handler())
                raise
            if pid == 0:
                # A fork_replacement may have forked behind os.fork's at-fork hooks.
                _process.postfork_child_noexec()
                return 0
            self._register_locked(pid, callback)
        return pid

    def _fork(self) -> int:
        replacement = self._hooks.fork_replacement
        if replacement is None:
            return os.fork()
        pid = replacement(self._user)
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
            raise InvalidArgumentError(
                f"fork_replacement must return a pid (int >= 0) or raise OSError, not {pid!r}"
            )
        return pid

    def _register_locked(self, pid: int, callback: ChildCallback) -> None:
        if pid in _process.OWNERS:
            # The kernel reused a pid whose death another context has not seen:
            # impossible unless someone reaped it behind our back.
            other = _process.OWNERS[pid]
            if other._ledger.stolen(pid):
                other._child_gone_locked(pid)
                other._waker.poke()
        self._ledger.add(pid, callback)
        _process.OWNERS[pid] = self
        pidfd = _pidfd.open_pidfd(pid) if self._rules.pidfd_wakeups else None
        if pidfd is not None:
            try:
                self._epoll.register(pidfd, select.EPOLLIN)
            except OSError:  # ENOSPC (max_user_watches), ENOMEM
                os.close(pidfd)
                pidfd = None
        if pidfd is not None:
            self._pidfds[pid] = pidfd
            self._fd_pid[pidfd] = pid
        self._watcher.add(pid, pidfd)
        if (
            pidfd is None
            and self._rules.pidfd_wakeups
            and not (_process.handler_installed() and _process.on_main_thread())
        ):
            # Nothing would announce this death promptly: no pidfd, and either no
            # handler yet or a handler that waits for a (possibly blocked) main thread.
            threading.Thread(
                target=_watch_in_thread, args=(pid, self._waker), name=f"childproc-peek-{pid}", daemon=True
            ).start()

    def _child_gone_locked(self, pid: int) -> None:
        """``pid`` left ``running`` (reaped by anyone): drop what watched it. LOCK held."""
        self._watcher.remove(pid)
        if _process.OWNERS.get(pid) is self:
            del _process.OWNERS[pid]
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            del self._fd_pid[fd]
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass
            os.close(fd)

    # -- reaping ------------------------------------------------------------
    def _route_locked(self, reaped: Reaped) -> None:
        """Send each reaped pid where :func:`route` says. LOCK held."""
        mode = self.mode
        has_cb = self._hooks.reaped_callback is not None
        for pid, status in reaped.exited:
            owner_ctx = _process.OWNERS.get(pid)
            owner = (
                Owner.THIS_CONTEXT
                if owner_ctx is self
                else Owner.NOBODY
                if owner_ctx is None
                else Owner.OTHER_CONTEXT
            )
            dest = route(mode, owner, has_cb)
            if dest is Destination.CHILD_CALLBACK:
                self._ledger.exited(pid, status)
                self._child_gone_locked(pid)
            elif dest is Destination.OTHER_CONTEXT:
                assert owner_ctx is not None
                owner_ctx._ledger.exited(pid, status)
                owner_ctx._child_gone_locked(pid)
                _process.set_handler_user(owner_ctx, owner_ctx._uses_handler())
                owner_ctx._waker.poke()
            elif dest is Destination.REAPED_CALLBACK:
                self._ledger.foreign(pid, status, EventKind.FOREIGN)
            else:
                self._ledger.foreign(pid, status, EventKind.UNKNOWN)
        if self._rules.reaper is not Reaper.APPLICATION:
            # ECHILD on a pid of ours means someone else reaped it; in MAINLOOP it
            # only means the application got there first and will report it.
            for pid in reaped.gone:
                if self._ledger.stolen(pid):
                    self._child_gone_locked(pid)
        _process.set_handler_user(self, self._uses_handler())

    def _collect(self) -> None:
        """Reap whatever the epoll says is ready, without blocking.

        All under the process lock: the handler check comes before the self-pipe
        is drained, so a raise never swallows a wake-up.
        """
        with _process.LOCK:
            self._check_usable()
            if self in _process._users:
                _process.check_handler()
            ready = self._epoll.poll(0)
            signalled = False
            woken: list[int] = []
            rfd = self._waker.rfd
            for fd, _ in ready:
                if fd == rfd:
                    signalled = True
                else:
                    woken.append(fd)
            if signalled:
                self._waker.drain()
            if not (signalled or woken):
                return
            fd_pid = self._fd_pid
            pairs = [(fd_pid[fd], fd) for fd in woken if fd in fd_pid]
            self._route_locked(self._watcher.reap(pairs, signalled))

    # -- delivery -----------------------------------------------------------
    def _deliver(self) -> int:
        delivered = 0
        with self._delivery:
            while not self._closed:
                with _process.LOCK:
                    event = self._ledger.pop()
                if event is None:
                    break
                try:
                    self._invoke(event)
                except BaseException:
                    if self._ledger.has_events and not self._closed:
                        self._waker.poke()  # keep fileno() readable for the rest
                    raise
                finally:
                    delivered += 1
        return delivered

    def _invoke(self, event: Event) -> None:
        if event.kind is EventKind.CHILD_EXIT:
            assert event.callback is not None
            event.callback(event.pid, event.status)
        elif event.kind is EventKind.FOREIGN:
            cb = self._hooks.reaped_callback
            known = cb(event.pid, event.status, self._user) if cb is not None else False
            if known is False:
                self._warn_unknown(event)
        elif event.kind is EventKind.UNKNOWN:
            self._warn_unknown(event)
        else:
            raise ChildStolenError(
                f"child {event.pid} of this context was reaped by someone else, so its exit "
                f"status is lost: something in this process calls waitpid() on pids it did not "
                f"make while childproc is in {self.mode.name} mode (see the mode guide)",
                event.pid,
            )

    def _warn_unknown(self, event: Event) -> None:
        log.warning(
            "unknown child [%d] %s (reaped by childproc in %s mode)",
            event.pid,
            describe_status(event.status),
            self.mode.name,
        )

    # -- the event loop interface ------------------------------------------
    def fileno(self) -> int:
        """An fd that is readable when :meth:`dispatch` has work (an epoll fd).

        Add it to your loop for reading (``selectors``, ``loop.add_reader``,
        ``trio.lowlevel.wait_readable``) and call :meth:`dispatch` when it fires.
        """
        self._check_usable()
        return self._epoll.fileno()

    def dispatch(self) -> int:
        """Reap what is ready and run due callbacks; never blocks. Returns how many
        events were delivered. A callback's exception propagates after the context
        is consistent again; the events after it stay queued for the next call."""
        self._enter()
        self._collect()
        return self._deliver()

    def wait(self, timeout: float | None = None) -> int:
        """Block until at least one event was delivered by this call, or ``timeout``
        seconds passed (None: no limit). Returns the number delivered (0 on timeout).

        Raises :class:`ClosedError` if the context is closed meanwhile.
        """
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0
        ):
            raise InvalidArgumentError(f"timeout must be None or a number >= 0, not {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        me = threading.get_ident()
        with self._waiters_cv:
            self._waiters[me] = self._waiters.get(me, 0) + 1
        try:
            while True:
                delivered = self.dispatch()
                if delivered:
                    return delivered
                if deadline is None:
                    remaining = -1.0
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return 0
                if self in _process._users and _process.handler_installed():
                    remaining = _HANDLER_RECHECK_S if remaining < 0 else min(remaining, _HANDLER_RECHECK_S)
                try:
                    self._epoll.poll(remaining)
                except ValueError:
                    self._check_usable()
                    raise
        finally:
            with self._waiters_cv:
                depth = self._waiters[me] - 1
                if depth:
                    self._waiters[me] = depth
                else:
                    del self._waiters[me]
                self._waiters_cv.notify_all()

    def start_dispatch_thread(self) -> threading.Thread:
        """Run :meth:`wait` forever on a daemon thread, for hosts with no loop.

        Callbacks then run on that thread; an exception from one is logged on
        logger ``childproc`` and the thread goes on. The thread ends at
        :meth:`close`. Note that a running thread makes a later ``os.fork()`` in
        this process unsafe in general (Python 3.12+ warns): prefer
        :meth:`fileno` in a loop you already have.
        """
        self._enter()
        if self._thread is not None and self._thread.is_alive():
            raise StateError("this context already has a dispatch thread")
        thread = threading.Thread(target=self._dispatch_forever, name="childproc-dispatch", daemon=True)
        self._thread = thread
        thread.start()
        return thread

    def _dispatch_forever(self) -> None:
        while not self._closed:
            try:
                self.wait()
            except (ClosedError, ForkedContextError):
                return
            except Exception:
                if self._closed:
                    return
                log.exception("a childproc callback raised on the dispatch thread")

    # -- MAINLOOP -----------------------------------------------------------
    def _require_app_reports(self, what: str) -> None:
        if not self._rules.app_reports:
            raise StateError(
                f"{what} is only for SigchldOwner.MAINLOOP, where the application reaps; this "
                f"context is in {self.mode.name} mode and reaps its children itself"
            )

    def childproc_reaped(self, pid: int, status: int) -> bool:
        """MAINLOOP: the application reaped ``pid`` with wait status ``status``.

        Returns True if the pid was this context's (its callback has then run,
        from this call), False otherwise. Do not call it from a signal handler:
        report from your main loop.
        """
        _validate_pid(pid, "pid")
        if not isinstance(status, int) or isinstance(status, bool) or not 0 <= status <= 0xFFFF:
            raise InvalidArgumentError(f"status must be a wait status (int 0..0xffff), not {status!r}")
        self._enter()
        self._require_app_reports("childproc_reaped()")
        with _process.LOCK:
            self._check_usable()
            owner_ctx = _process.OWNERS.get(pid)
            owner = (
                Owner.THIS_CONTEXT
                if owner_ctx is self
                else Owner.NOBODY
                if owner_ctx is None
                else Owner.OTHER_CONTEXT
            )
            if route(self.mode, owner, False) is not Destination.CHILD_CALLBACK:
                return False
            self._ledger.exited(pid, status)
            self._child_gone_locked(pid)
        self._deliver()
        return True

    def sigchld_occurred(self) -> int:
        """MAINLOOP: "a SIGCHLD happened": reap and deliver this context's dead children.

        For applications that reap only their own children (``waitpid(pid)``), so
        childproc's stay for childproc. Checks each of this context's children
        (``waitpid(pid, WNOHANG)``). Returns the number of events delivered.
        """
        self._enter()
        self._require_app_reports("sigchld_occurred()")
        with _process.LOCK:
            self._check_usable()
            self._route_locked(scan(self._ledger.running_pids(), Reaped()))
        return self._deliver()

    # -- teardown -----------------------------------------------------------
    def close(self) -> None:
        """Stop managing children; release the handler, fds and registry entries.

        * Children of this context that have exited are reaped (so no zombie of
          ours is left), except in MAINLOOP, where the application reaps; their
          undelivered callbacks are dropped: call :meth:`dispatch` first if you
          want them.
        * Children still running are left running and are no longer watched:
          the application inherits them, as in libxl. They become zombies when
          they exit unless something reaps them (``os.waitpid(pid, 0)``).
        * The SIGCHLD handler is restored if this was its last user (on a worker
          thread: at the next childproc call on the main thread).
        * A dispatch thread is stopped; other threads blocked in :meth:`wait`
          wake up with :class:`ClosedError`.

        Idempotent; safe from a callback. In a forked child it only marks the
        inherited context closed.
        """
        if self._closed:
            return
        if self._forked or self._pid != os.getpid():
            self._closed = True
            return
        with _process.LOCK:
            if self._closed:
                return
            self._closed = True
            try:
                if self._rules.reaper is not Reaper.APPLICATION:
                    scan(self._ledger.running_pids(), Reaped())  # reap our zombies; drop statuses
            finally:
                for pid in self._ledger.forget_running():
                    self._child_gone_locked(pid)
                self._ledger.discard_queue()
                _process.set_handler_user(self, False)  # never raises
        waker = self._waker
        waker.poke()
        try:
            me = threading.get_ident()
            thread = self._thread
            if thread is not None and thread.ident != me:
                thread.join()
            with self._waiters_cv:
                self._waiters_cv.wait_for(lambda: not (set(self._waiters) - {me}), timeout=5.0)
        finally:
            self._epoll.close()
            waker.close_read()
            # The write end is never closed explicitly: the SIGCHLD handler or a
            # peek thread may hold the waker right now and poke it. It closes with
            # the waker's last reference, which is usually this one.
            self._waker = _CLOSED_WAKER
        _process.run_chores()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _abandon_after_fork(self) -> None:
        """In a forked child: disable this inherited context and close its fds."""
        self._forked = True
        for fd in self._pidfds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._pidfds.clear()
        self._fd_pid.clear()
        try:
            self._epoll.close()
        except OSError:  # pragma: no cover
            pass
        self._waker.close_read()
        self._waker.close_write()
