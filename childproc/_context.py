"""The Context: make or adopt children, learn exactly once when each dies.

The façade over parts with one job each:

* :mod:`childproc._creators`: how a child comes to be (fork, spawn, adopt);
* :mod:`childproc._wakeups`: the context's fds (epoll, self-pipe, pidfds, exit fds);
* :mod:`childproc._reaping`: from "ready" to the right ledger, through the watcher
  and :func:`childproc._policy.route`;
* :mod:`childproc._ledger` and :mod:`childproc._lifecycle`: each child's state and
  the exactly-once event queue;
* :mod:`childproc._delivery`: running callbacks;
* :mod:`childproc._sigchld` and :mod:`childproc._process`: what is process-wide.

How a death travels
-------------------
1. ``child_fork``/``fork``/``spawn``/``adopt`` make or take the child with the
   process lock held; its pid reaches the context's record from C, and the
   child is registered (ledger, ``OWNERS``, watcher, pidfd in the epoll)
   before the lock is released, so no reaper anywhere in the process can take
   the pid unseen.
2. The child dies. Its pidfd becomes readable; SIGCHLD pokes the self-pipe of
   every context that uses the handler. Either makes ``fileno()`` readable.
3. ``dispatch()`` (or ``wait()``) reaps into the journal and applies it: the
   child's state moves (:mod:`childproc._lifecycle`) and its event is queued.
4. Delivery runs the event's callback, exactly once; then the child's fds are
   closed (after the callback: each close releases the GIL, and a callback
   should not wait for other threads' turns to run).

Interruptions
-------------
A ``KeyboardInterrupt`` (or any exception a signal handler raises) may land
between any two bytecodes of the main thread. Every step above keeps what it
changed in the kernel in a record the next call finds (a start in
``_starting``, a reap in the journal, a teardown in the process's chores), and
replaying a record changes nothing twice; :meth:`Context._enter` replays what
an interruption left.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from . import _process
from ._child import Child, EventCallback, check_events
from ._creators import Adopt, Creator, Fork, Spawn
from ._delivery import Delivery
from ._errors import (
    AlreadyWatchedError,
    ChildExitedError,
    ClosedError,
    FdLostError,
    ForkedContextError,
    InvalidArgumentError,
    NotOurChildError,
    PidfdUnavailableError,
    SigchldIgnoredError,
    StateError,
    UnknownChildError,
)
from ._fds import pid_of_pidfd
from ._ledger import ChildCallback, Ledger
from ._lifecycle import SIGNALLABLE, Move, Phase
from ._orphans import ORPHANAGE
from ._plan import ForkReplacement, Hooks, Plan, ReapedCallback
from ._policy import Destination, Owner, Reaper, SigchldOwner, choose_watcher
from ._reaping import Reaping
from ._sigchld import HANDLER, on_main_thread
from ._signature import check_callback
from ._status import ChildEvent
from ._watchers import Watcher, make_watcher
from ._watchers import pidfd as _pidfd
from ._watchers._base import found_from_waitid, reap_zombie
from ._watchers.scan import scan

if TYPE_CHECKING:
    from ._spawn import Argv

__all__ = ["Context", "ForkReplacement", "Hooks", "ReapedCallback", "ServedLike"]

log = logging.getLogger("childproc")

_HANDLER_RECHECK_S = 1.0  # how often a blocked wait() re-checks what it relies on
_EXIT_ONLY = os.WEXITED
_fallback_logged = False
_BLOCK_SIGINT = ((signal.SIG_BLOCK, (signal.SIGINT,)),)


class ServedLike(Protocol):
    """What :meth:`Context.watch_served` needs of a fork server's child."""

    @property
    def pid(self) -> int: ...
    @property
    def exit_fd(self) -> int | None: ...
    def detach_fds(self) -> tuple[int | None, int | None]: ...


def _validate_pid(pid: object, what: str) -> int:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise InvalidArgumentError(f"{what} must be a positive int pid, not {pid!r}")
    return pid


def _watch_in_thread(pid: int, poke: Callable[[], None]) -> None:
    """Last-resort wake-up for a child with no pidfd when nothing else would announce
    its death promptly: block in ``waitid(WNOWAIT)`` (peeks, never reaps), then poke."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        pass
    poke()


class Context:
    """A set of children and the machinery to learn, exactly once, when each dies.

    ``Context()`` starts in ``SELECTIVE_REAP`` (only its own children are ever
    reaped); ``Context(mode=SigchldOwner.PIDFD)`` or ``Context(hooks=Hooks(...))``
    chooses the mode in one step (as :meth:`setmode` does).

    Thread safety: every method may be called from any thread. In the modes that
    use the SIGCHLD handler, call ``setmode`` (and the first fork) on the main
    thread where you can (``signal.signal`` works only there); on another thread
    the handler is installed by the next childproc call on the main thread, and
    children made meanwhile are watched through their pidfds.

    Callbacks run from :meth:`dispatch`, :meth:`wait`, :meth:`childproc_reaped`
    or :meth:`sigchld_occurred`, or on the dispatch thread if one was started
    with :meth:`start_dispatch_thread`, never from a signal handler.
    """

    def __init__(
        self, mode: SigchldOwner | None = None, *, hooks: Hooks | None = None, user: Any = None
    ) -> None:
        if mode is not None and not isinstance(mode, SigchldOwner):
            raise InvalidArgumentError(
                f"mode must be a childproc.SigchldOwner (e.g. SigchldOwner.PIDFD), not {mode!r}"
            )
        if hooks is not None and not isinstance(hooks, Hooks):
            raise InvalidArgumentError(f"hooks must be a childproc.Hooks, not {hooks!r}")
        if mode is not None and hooks is not None and hooks.chldowner is not mode:
            raise InvalidArgumentError(
                f"mode={mode.name} and hooks.chldowner={hooks.chldowner.name} disagree: give one"
            )
        self._pid = os.getpid()
        self._closed = False
        self._torn_down = False
        self._forked = False
        self._hooks = Hooks()
        self._user: Any = None
        self._pidfds = _pidfd.supported()
        self._plan = Plan(self._hooks, self._pidfds)
        self._ledger: Ledger[Child] = Ledger()
        from ._wakeups import Wakeups  # noqa: PLC0415 - (kept beside its only user)

        self._wakeups = Wakeups()
        self._handler_key = object()  # who this context is to the SIGCHLD handler
        self._ref = weakref.ref(self)
        self._lost_why: dict[int, str] = {}  # pid -> why its status is lost, where not "stolen"
        self._reaping = Reaping(
            self, self._ledger, self._wakeups, gone=self._child_gone_locked, lost_why=self._lost_why
        )
        self._delivery = Delivery(
            self._ledger,
            reaped_callback=None,
            reap_zombie=self._reap_zombie,
            reap_leftovers=self._reap_leftover_zombies,
            lost_why=self._lost_why,
            mode_name=lambda: self.mode.name,
            poke=lambda: self._wakeups.waker.poke(),  # noqa: PLW0108 - the waker is replaced at close
        )
        self._watcher: Watcher = make_watcher(choose_watcher(self.mode, self._pidfds))
        self._starting: list[list[Any]] = []  # [child, pid?]: starts not finished
        self._gone: list[Child] = []  # children whose fds await closing (after delivery)
        self._dirty = False  # an interruption may have left work: replay at the next entry
        self._fds_checked_at = time.monotonic()
        self._waiters: dict[object, int] = {}  # a blocked wait()'s token -> its thread
        self._waiters_cv = threading.Condition(threading.Lock())
        self._teardown_lock = threading.Lock()
        self._doomed: list[Child] = []
        self._thread: threading.Thread | None = None
        _process.register_context(self)
        if mode is not None or hooks is not None:
            self.setmode(hooks if hooks is not None else Hooks(chldowner=mode), user)  # type: ignore[arg-type]

    # -- small helpers ------------------------------------------------------
    @property
    def mode(self) -> SigchldOwner:
        """The current :class:`SigchldOwner`."""
        return self._hooks.chldowner

    @property
    def hooks(self) -> Hooks:
        """The :class:`Hooks` in force (``Hooks()``, SELECTIVE_REAP, until :meth:`setmode`)."""
        return self._hooks

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or the context was inherited and closed)."""
        return self._closed

    @property
    def watcher(self) -> str:
        """The name of the mechanism that reaps this context's children (see the docs)."""
        return self._watcher.kind.name

    @property
    def uses_sigchld_handler(self) -> bool:
        """Whether this context needs childproc's SIGCHLD handler right now."""
        return HANDLER.uses(self._handler_key)

    @property
    def children(self) -> frozenset[int]:
        """Pids this context made whose exit has not been delivered yet (a snapshot)."""
        _process.refuse_reentry()
        with _process.LOCK:
            self._recover_locked()
            return self._ledger.outstanding()

    def child(self, pid: int) -> Child:
        """The handle of running child ``pid`` (raises :class:`UnknownChildError`)."""
        _process.refuse_reentry()
        with _process.LOCK:
            self._recover_locked()
            handle = self._ledger.handle(pid)
        if handle is None:
            raise UnknownChildError(f"pid {pid!r} is not a running child of this context")
        return handle

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._ledger.unreaped} running"
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
        """Raise if this context cannot be used here; finish what an interruption left."""
        if self._closed or self._forked or self._pid != os.getpid():
            self._check_usable()
        if _process.held_here():
            raise _process.reentry_error()
        if _process.CHORES:
            _process.run_chores()
        if self._dirty:
            with _process.LOCK:
                self._recover_locked()

    def _recover_locked(self) -> None:
        """Finish starts and apply journal entries an interruption left. LOCK held."""
        self._dirty = True
        for start in list(self._starting):
            if len(start) > 1 and start[1] > 0:
                self._register_locked(start[0], start[1])
            self._starting.remove(start)
        if self._reaping.journal or self._reaping.served_news:
            self._reaping.apply(self._plan, self._watcher)
        self._dirty = False

    def _sync_handler_use_locked(self) -> None:
        """Make this context a user of the SIGCHLD handler, or not, as its plan says
        for its children now (a fork server's count not: their exits come on exit fds)."""
        children = len(self._ledger.running) - len(self._wakeups.served)
        wanted = self._plan.wants_handler[(children > 0) * 2 + (len(self._reaping.stop_watchers) > 0)]
        if HANDLER.uses(self._handler_key) != wanted:
            HANDLER.set_user(self._handler_key, self._wakeups.waker.poke, wanted)

    def _refuse_ignored(self, mode: SigchldOwner, why: str, when: str) -> None:
        raise SigchldIgnoredError(
            f"SIGCHLD is {why} in this process, so the kernel discards every child's exit "
            f"status, and {mode.name} mode {when}. Either restore the default "
            "(signal.signal(signal.SIGCHLD, signal.SIG_DFL)) while childproc has children, or use "
            "SigchldOwner.LIBXL_ALWAYS, which replaces the disposition while it runs (on the main "
            "thread) and reaps the host's children for it (see Hooks.reaped_callback)."
        )

    # -- configuration ------------------------------------------------------
    def setmode(self, hooks: Hooks | None = None, user: Any = None) -> None:
        """Choose who owns SIGCHLD (libxl's ``libxl_childproc_setmode``).

        ``hooks=None`` means ``Hooks()`` (SELECTIVE_REAP). ``user`` is passed to
        the hooks. Allowed only while the context has no outstanding children and
        no undelivered events. A mode that always needs the SIGCHLD handler
        installs it now (on the main thread; elsewhere at the next main-thread call).

        Raises :class:`StateError` with children outstanding,
        :class:`SigchldConflictError` if the mode needs the handler and a foreign
        SIGCHLD handler is installed, :class:`SigchldIgnoredError` if SIGCHLD is
        ignored and the mode would leave it so, :class:`PidfdUnavailableError`
        for PIDFD without pidfds, :class:`InvalidArgumentError` for bad hooks.
        """
        global _fallback_logged
        if hooks is None:
            hooks = Hooks()
        if not isinstance(hooks, Hooks):
            raise InvalidArgumentError(f"setmode() takes a childproc.Hooks, not {hooks!r}")
        self._enter()
        plan = Plan(hooks, self._pidfds)
        if plan.rules.requires_pidfds and not self._pidfds:
            raise PidfdUnavailableError(
                f"{hooks.chldowner.name} needs pidfds (Linux >= 5.3, not blocked by seccomp) and this "
                "system has none; use SELECTIVE_REAP, which falls back to SIGCHLD and a per-child check"
            )
        with _process.LOCK:
            self._check_usable()
            if self._ledger.unreaped or self._ledger.has_events or self._reaping.zombies:
                raise StateError(
                    "setmode() while this context has children outstanding or events undelivered; "
                    "call setmode() before the first child, or after every child's callback ran"
                )
            if plan.refuse_ignored_at_setmode:
                why = HANDLER.discards_statuses(fresh=True)
                if why is not None:
                    self._refuse_ignored(hooks.chldowner, why, "leaves SIGCHLD's disposition alone")
            if plan.rules.foreign_children_check.name == "SETMODE":
                self._refuse_foreign_children_locked(hooks.chldowner)
            old = (self._hooks, self._user, self._plan, self._watcher)
            self._hooks, self._user, self._plan = hooks, user, plan
            self._watcher = make_watcher(choose_watcher(hooks.chldowner, self._pidfds))
            cb = hooks.reaped_callback
            self._delivery.reaped_callback = None if cb is None else (lambda pid, st: cb(pid, st, self._user))
            try:
                self._sync_handler_use_locked()
            except BaseException:
                self._hooks, self._user, self._plan, self._watcher = old
                raise
        if plan.rules.reaper is Reaper.OWN_CHILDREN and not self._pidfds and not _fallback_logged:
            _fallback_logged = True
            log.warning(
                "pidfds are not available here: %s falls back to SIGCHLD and checks every child "
                "on each signal (O(children)); see `python -m childproc doctor`",
                hooks.chldowner.name,
            )

    # -- making children ----------------------------------------------------
    def child_fork(self, callback: ChildCallback) -> int:
        """Fork; return the child's pid in the parent and 0 in the child (libxl's API).

        ``callback(pid, status)`` runs exactly once, after the child was reaped,
        with the wait status (decode with ``os.waitstatus_to_exitcode`` or
        :func:`childproc.describe_status`). It runs from :meth:`dispatch` or
        :meth:`wait` (in MAINLOOP from :meth:`childproc_reaped` itself). The
        child's handle is ``ctx.child(pid)``.

        The child should exec or ``os._exit`` soon; it must not use this context
        (it raises :class:`ForkedContextError` there).

        Raises :class:`ForkError` (with ``errno``) if the fork fails, leaving no
        registry entry and no handler installed only for this child;
        :class:`SigchldConflictError` before forking if the mode needs the
        SIGCHLD handler and someone else's is installed.
        """
        check_callback(callback, 2, "child_fork()'s callback", "callback(pid, status)")
        child = self._start(
            Fork(self._plan_fork_replacement(), self._user),
            None,
            events=_EXIT_ONLY,
            oneshot=False,
            reap_after_callback=False,
            kill_on_close=False,
            on_exit_status=callback,
        )
        return 0 if child is None else child._pid

    def _plan_fork_replacement(self) -> ForkReplacement | None:
        return self._hooks.fork_replacement

    def fork(
        self,
        on_event: EventCallback | None = None,
        *,
        events: int = os.WEXITED,
        oneshot: bool = False,
        reap_after_callback: bool = False,
        kill_on_close: bool = False,
    ) -> Child | None:
        """Fork; return the child's :class:`Child` handle in the parent, None in the child.

        ``on_event(child, event)`` runs once per reported :class:`ChildEvent`:
        always for the exit (exactly once), and for stops and continues if
        ``events`` includes ``os.WSTOPPED``/``os.WCONTINUED`` (with ``oneshot``,
        only the first of those). ``reap_after_callback`` runs the exit callback
        while the child is still a zombie (``/proc/<pid>`` readable) and reaps it
        right after, even if the callback raised (SELECTIVE_REAP and PIDFD only).
        ``kill_on_close`` kills and reaps the child when the context closes or the
        handle is released. Errors as for :meth:`child_fork`.
        """
        return self._start(
            Fork(self._plan_fork_replacement(), self._user),
            on_event,
            events=events if events is _EXIT_ONLY else check_events(events),
            oneshot=oneshot,
            reap_after_callback=reap_after_callback,
            kill_on_close=kill_on_close,
        )

    def spawn(
        self,
        argv: Argv,
        on_event: EventCallback | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        pass_fds: Sequence[int] = (),
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        events: int = os.WEXITED,
        oneshot: bool = False,
        reap_after_callback: bool = False,
        kill_on_close: bool = False,
    ) -> Child:
        """Run a program with ``posix_spawn``, without forking the interpreter.

        Costs the same from a 4 GiB parent as from a small one. ``env`` replaces
        the environment (default: this process's); ``cwd`` is the working
        directory; ``pass_fds`` stay open in the child at the same numbers;
        ``stdin``, ``stdout``, ``stderr`` are fds to put at 0, 1, 2. SIGPIPE and
        SIGXFSZ start at their defaults, as with ``subprocess``; so does SIGCHLD,
        and no signal is blocked. ``argv[0]`` without a ``/`` is looked up on the
        ``PATH`` of ``env`` (or of this process). The child is registered before
        anyone can reap it, in every mode. Other arguments as for :meth:`fork`.

        Raises :class:`SpawnError` (with ``errno`` and ``filename``) if the program
        or ``cwd`` cannot be used; it is also a :class:`FileNotFoundError`,
        :class:`PermissionError` or :class:`NotADirectoryError` as ``subprocess``
        raises. Wrong argument types raise :class:`InvalidArgumentError`, also a
        :class:`TypeError`.
        """
        if type(pass_fds) is not tuple and (
            not isinstance(pass_fds, Sequence) or isinstance(pass_fds, (str, bytes))
        ):
            raise InvalidArgumentError(f"pass_fds must be a sequence of fds, not {pass_fds!r}")
        creator = Spawn(argv, env=env, cwd=cwd, pass_fds=pass_fds, stdin=stdin, stdout=stdout, stderr=stderr)
        child = self._start(
            creator,
            on_event,
            events=events if events is _EXIT_ONLY else check_events(events),
            oneshot=oneshot,
            reap_after_callback=reap_after_callback,
            kill_on_close=kill_on_close,
        )
        assert child is not None
        return child

    def adopt(
        self,
        pid: int | None = None,
        on_event: EventCallback | None = None,
        *,
        pidfd: int | None = None,
        own_pidfd: bool = True,
        events: int = os.WEXITED,
        oneshot: bool = False,
        reap_after_callback: bool = False,
        kill_on_close: bool = False,
    ) -> Child:
        """Watch a child this process made some other way (``os.posix_spawn``, a C extension).

        Give ``pid``, or ``pidfd`` (a pidfd for the child). With ``own_pidfd``
        (the default) childproc closes that pidfd when done with it; with
        ``own_pidfd=False`` it works on a duplicate and leaves yours alone. A
        child that already exited is reported at the next dispatch. Other
        arguments as for :meth:`fork`.

        Raises :class:`InvalidArgumentError` for a pid <= 1 or a bad pidfd,
        :class:`AlreadyWatchedError` if a childproc context already watches it,
        :class:`NotOurChildError` if it is not a child of this process (or was
        already reaped).
        """
        if (pid is None) == (pidfd is None):
            raise InvalidArgumentError("adopt() takes exactly one of pid= and pidfd=")
        fd: int | None = None
        if pidfd is not None:
            if not isinstance(pidfd, int) or isinstance(pidfd, bool) or pidfd < 0:
                raise InvalidArgumentError(f"pidfd must be a file descriptor, not {pidfd!r}")
            found = pid_of_pidfd(pidfd)
            if found is None:
                raise InvalidArgumentError(f"fd {pidfd} is not a pidfd")
            if found <= 0:
                raise NotOurChildError(f"the process of pidfd {pidfd} has already exited and been reaped")
            pid = found
            fd = pidfd if own_pidfd else os.dup(pidfd)
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
            if fd is not None and fd != pidfd:
                os.close(fd)
            raise InvalidArgumentError(f"adopt() needs a child's pid (> 1), not {pid!r}")
        try:
            child = self._start(
                Adopt(pid),
                on_event,
                events=check_events(events),
                oneshot=oneshot,
                reap_after_callback=reap_after_callback,
                kill_on_close=kill_on_close,
                adopt_pidfd=fd,
            )
        except BaseException:
            if fd is not None and fd != pidfd:
                os.close(fd)
            raise
        assert child is not None
        self._wakeups.waker.poke()  # it may already be a zombie: look now
        return child

    def _start(
        self,
        creator: Creator,
        on_event: EventCallback | None,
        *,
        events: int,
        oneshot: bool,
        reap_after_callback: bool,
        kill_on_close: bool,
        adopt_pidfd: int | None = None,
        on_exit_status: ChildCallback | None = None,
    ) -> Child | None:
        """The one way a child comes in: check, start (through ``creator``), register,
        all under the process lock. See the module docstring for interruptions."""
        if on_event is not None:
            check_callback(on_event, 2, "on_event", "on_event(child, event)")
        self._enter()
        mode = self.mode
        rules = self._plan.rules
        watches_stops = events != _EXIT_ONLY
        if watches_stops and not rules.stop_events:
            raise InvalidArgumentError(
                f"stop/continue events need SIGCHLD (pidfds only report exits), and {mode.name} "
                "mode never uses it; use SELECTIVE_REAP for them"
            )
        if reap_after_callback and not rules.deferred_reap:
            raise InvalidArgumentError(
                f"reap_after_callback needs a mode that reaps only its own children (SELECTIVE_REAP, "
                f"PIDFD); {mode.name} reaps by waitpid(-1) or leaves reaping to the application"
            )
        call = creator.prepare()
        with _process.LOCK:
            self._check_usable()
            plan = self._plan
            if creator.adopting:
                assert isinstance(creator, Adopt)
                self._check_adoptable_locked(creator.pid, adopt_pidfd)
            if plan.first_child_check and not self._ledger.running:
                self._refuse_foreign_children_locked(
                    mode, creator.pid if isinstance(creator, Adopt) else None
                )
            if plan.wants_handler[2 + (watches_stops or len(self._reaping.stop_watchers) > 0)]:
                HANDLER.check()
                if not HANDLER.uses(self._handler_key):
                    HANDLER.set_user(self._handler_key, self._wakeups.waker.poke, True)
            if not creator.adopting:
                why = HANDLER.discards_statuses(fresh=True)
                if why is not None:
                    self._sync_handler_use_locked()
                    self._refuse_ignored(
                        mode,
                        why,
                        "leaves SIGCHLD's disposition alone"
                        if plan.refuse_ignored_at_setmode
                        else "could not put its handler in place before this child (not the main thread)",
                    )
            child = Child(
                self,
                0,
                on_event,
                events=events,
                oneshot=oneshot,
                defer_reap=reap_after_callback,
                kill_on_close=kill_on_close,
                on_exit_status=on_exit_status,
            )
            start: list[Any] = [child]
            self._starting.append(start)
            masks: list[Any] = []
            try:
                try:
                    if isinstance(creator, Fork) and on_main_thread():
                        # SIGINT waits until the fork is over: a KeyboardInterrupt raised in
                        # an at-fork hook (logging's, say) would be swallowed by CPython.
                        masks.extend(itertools.starmap(signal.pthread_sigmask, _BLOCK_SIGINT))
                    start.extend(itertools.starmap(call, ((),)))  # the pid lands in start[1] from C
                except OSError as exc:
                    raise creator.error(exc) from exc
                finally:
                    if masks:
                        signal.pthread_sigmask(signal.SIG_SETMASK, masks[0])
                if start[1] == 0:
                    # A fork_replacement may have forked behind os.fork's at-fork hooks.
                    _process.postfork_child_noexec()
                    return None
                pid = creator.check_pid(start[1])
                self._register_locked(child, pid, adopt_pidfd)
                self._starting.remove(start)
            except BaseException:
                self._recover_locked()
                self._sync_handler_use_locked()
                raise
        return child

    def _refuse_foreign_children_locked(self, mode: SigchldOwner, except_pid: int | None = None) -> None:
        foreign = [p for p in _process.foreign_children() if p != except_pid and not ORPHANAGE.claims(p)]
        if foreign:
            raise StateError(
                f"{mode.name} mode reaps with waitpid(-1), and this process already has "
                f"children childproc did not make (pids {', '.join(map(str, foreign[:10]))}): "
                "they would be reaped here and their owners (subprocess, asyncio) would see "
                "returncode 0. Use SELECTIVE_REAP (or PIDFD), which only reaps its own."
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

    def _register_locked(self, child: Child, pid: int, pidfd: int | None = None) -> None:
        """Make ``child`` (``pid``) watched. Idempotent: an interrupted registration
        is finished by calling it again. LOCK held."""
        child._pid = pid
        ref = _process.OWNERS.get(pid)
        other = ref() if ref is not None else None
        if other is not None and other is not self:
            # The kernel reused a pid whose death another context has not seen:
            # possible only if someone reaped it behind childproc's back.
            other.accept_gone(pid)
        self._ledger.add(pid, child)
        _process.OWNERS[pid] = self._ref
        plan = self._plan
        wakeups = self._wakeups
        if child._pidfd is None:
            if pidfd is not None:
                child._pidfd = wakeups.take_pidfd(pid, pidfd)
            elif plan.pidfds:
                child._pidfd = wakeups.open_pidfd(pid)
        if child._pidfd is not None and plan.pidfd_wakeups and not child._polled:
            wakeups.poll_pidfd(child)
        if child._watches_stops:
            self._reaping.stop_watchers.add(pid)
        self._watcher.add(child)
        if not child._polled and plan.pidfd_wakeups and not (HANDLER.installed and on_main_thread()):
            # Nothing would announce this death promptly: no pidfd, and either no
            # handler or one that waits for a (possibly blocked) main thread.
            self._start_peek_thread(pid)

    def _start_peek_thread(self, pid: int) -> None:
        threading.Thread(
            target=_watch_in_thread,
            args=(pid, self._wakeups.waker.poke),
            name=f"childproc-peek-{pid}",
            daemon=True,
        ).start()

    def _child_gone_locked(self, child: Child) -> None:
        """``child`` was reaped, stolen or released: stop watching it. Its fds are
        closed after delivery (:meth:`_close_gone_fds`). LOCK held."""
        pid = child._pid
        self._watcher.remove(pid)
        self._reaping.zombies.pop(pid, None)
        if _process.OWNERS.get(pid) is self._ref:
            del _process.OWNERS[pid]
        self._reaping.stop_watchers.discard(pid)
        if child._pidfd is not None or child._exit_fd is not None:
            self._gone.append(child)

    def _close_gone_fds(self) -> None:
        """Close the fds of children that left (after their callbacks ran)."""
        if not self._gone:
            return
        with _process.LOCK:
            while self._gone:
                child = self._gone[0]
                if child._pidfd is not None:
                    self._wakeups.close_pidfd(child._pid)
                    child._pidfd = None
                if child._exit_fd is not None:
                    self._wakeups.remove_served(child)
                    child._exit_fd = None
                del self._gone[0]

    # -- what other contexts and the ledger's owner call ---------------------
    def accept_reaped(self, pid: int, status: int, uid: int | None) -> None:
        """Another context reaped our ``pid`` (``waitpid(-1)``). LOCK held."""
        self._reaping.accept_exit(pid, status, uid)
        self._sync_handler_use_locked()
        self._wakeups.waker.poke()

    def accept_gone(self, pid: int) -> None:
        """Our ``pid`` was found reaped by someone else. LOCK held."""
        self._reaping.accept_gone(pid)
        self._wakeups.waker.poke()

    # -- reaping ------------------------------------------------------------
    def _collect(self, ready: list[tuple[int, int]] | None = None) -> None:
        """Reap whatever the epoll says is ready, without blocking; apply the journal.

        ``ready``: what a ``poll`` of the epoll just returned (``wait()`` passes its
        own); None polls now. With the SIGCHLD handler in use it polls again all
        the same: the handler pokes the self-pipe just after the poll that saw a
        child's pidfd (it runs between bytecodes), and taking both now saves a
        whole empty round later. The handler check comes first, so a raise never
        swallows a wake-up.
        """
        with _process.LOCK:
            if self._closed:  # closed by another thread since _enter() checked
                raise ClosedError("this childproc Context is closed; create a new one")
            self._dirty = True
            if HANDLER.uses(self._handler_key):
                HANDLER.check()
                ready = self._wakeups.poll(0)
            elif ready is None:
                ready = self._wakeups.poll(0)
            self._reaping.collect(self._watcher, ready)
            self._reaping.apply(self._plan, self._watcher)
            self._sync_handler_use_locked()
            self._dirty = False
        if not ready and time.monotonic() - self._fds_checked_at >= _HANDLER_RECHECK_S:
            self._check_fds()

    def _report_lost_fds(self) -> None:
        lost = self._wakeups.lost
        if lost:
            pids = list(lost)
            del lost[:]
            raise FdLostError(
                f"the pidfd childproc held for child(ren) {', '.join(map(str, pids))} was closed by "
                "someone else (the number may name another file now, which childproc leaves alone); "
                "childproc watches them by pid from now on. Do not close fds you did not open "
                "(closerange()/os.closerange in a host, a daemonize step).",
                pids,
            )

    # -- delivery -----------------------------------------------------------
    def _deliver(self) -> int:
        try:
            return self._delivery.deliver(lambda: self._closed)
        finally:
            self._close_gone_fds()

    def _reap_zombie(self, child: Child) -> None:
        """Reap a child whose exit callback ran while it was a zombie."""
        with _process.LOCK:
            if self._reaping.zombies.get(child._pid) is not child:
                return
            reap_zombie(child)
            self._ledger.exited(child._pid, child._status or 0)  # (not running: no event)
            if child.phase is Phase.REAP_DUE:
                child.phase = Phase.DELIVERED
            self._child_gone_locked(child)
            self._sync_handler_use_locked()

    def _reap_leftover_zombies(self) -> None:
        zombies = self._reaping.zombies
        if zombies:
            for child in [c for c in zombies.values() if c.phase is Phase.REAP_DUE]:
                self._reap_zombie(child)

    # -- handles --------------------------------------------------------------
    def _signal_child(self, child: Child, sig: int) -> None:
        if not isinstance(sig, int) or isinstance(sig, bool) or not 0 <= sig < signal.NSIG:
            raise InvalidArgumentError(f"not a signal number: {sig!r}")
        _process.refuse_reentry()
        with _process.LOCK:
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
                    f"cannot signal child {child._pid} safely: a fork server made it and there is no "
                    "pidfd for it"
                )
            if self._plan.rules.reaper is Reaper.APPLICATION:
                raise StateError(
                    f"cannot signal child {child._pid} safely: there is no pidfd for it, and in "
                    "MAINLOOP the application reaps, so its pid may already name another process"
                )
            # Unreaped, and only childproc reaps it (the mode's promise): the pid is still its.
            os.kill(child._pid, sig)

    def _release_child(self, child: Child) -> None:
        _process.refuse_reentry()
        kill = False
        with _process.LOCK:
            if child.released or child.phase in (Phase.DELIVERED, Phase.REAP_DUE):
                if child.phase is Phase.REAP_DUE:
                    self._reap_zombie(child)
                return
            if child.phase is Phase.EXIT_SEEN:
                reap_zombie(child)  # its exit was seen
                child.phase = Phase.RELEASED
                self._child_gone_locked(child)
                self._sync_handler_use_locked()
            elif child.context is self and self._ledger.is_running(child._pid):
                kill = child.kill_on_close and self._kill_locked(child)
                self._ledger.forget(child._pid)
                if not kill:
                    self._child_gone_locked(child)
                    self._sync_handler_use_locked()
            else:
                child.phase = Phase.RELEASED if child.phase not in SIGNALLABLE else child.phase
        if kill:
            self._reap_killed([child])
        self._close_gone_fds()

    def _kill_locked(self, child: Child) -> bool:
        """SIGKILL an owned child; False where that cannot be done safely. LOCK held."""
        try:
            if child._pidfd is not None:
                signal.pidfd_send_signal(child._pidfd, signal.SIGKILL)
            elif self._plan.rules.reaper is Reaper.APPLICATION or child._exit_fd is not None:
                log.warning(
                    "not killing child %d on close: there is no pidfd for it and in MAINLOOP the "
                    "application reaps, so its pid may already name another process",
                    child._pid,
                )
                return False
            else:
                os.kill(child._pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return True

    def _reap_killed(self, children: list[Child]) -> None:
        """Wait for SIGKILLed children to die and reap them (outside the lock)."""
        for child in children:
            try:
                if child._exit_fd is not None:
                    self._reaping.read_served_blocking(child, child._exit_fd)  # the server reaps it
                    info = None
                elif child._pidfd is not None:
                    info = os.waitid(os.P_PIDFD, child._pidfd, os.WEXITED)
                else:
                    info = os.waitid(os.P_PID, child._pid, os.WEXITED)
                if info is not None and child._status is None:
                    child._status = found_from_waitid(info)[1]
            except (ChildProcessError, OSError):
                pass  # someone else reaped it meanwhile
        with _process.LOCK:
            del self._reaping.served_news[:]
            for child in children:
                if child.phase in SIGNALLABLE:
                    child.phase = Phase.RELEASED
                self._child_gone_locked(child)
            if not self._closed:
                self._sync_handler_use_locked()

    def _wait_child(self, child: Child, timeout: float | None) -> ChildEvent | None:
        """Dispatch until ``child``'s exit was delivered, by this thread or another
        (in MAINLOOP, the thread calling childproc_reaped pokes the waker)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        token = object()
        try:
            self._waiters[token] = threading.get_ident()
            while True:
                self.dispatch()
                if child.done:
                    return child.final
                remaining = -1.0 if deadline is None else deadline - time.monotonic()
                if deadline is not None and remaining <= 0:
                    return None
                if not self._sleep(
                    _HANDLER_RECHECK_S if remaining < 0 else min(remaining, _HANDLER_RECHECK_S)
                ):
                    self._check_fds()
        finally:
            self._waiting_end(token)

    def _waiting_end(self, token: object) -> None:
        self._waiters.pop(token, None)
        if self._closed:  # close() may be waiting for us
            with self._waiters_cv:
                self._waiters_cv.notify_all()

    def _sleep(self, timeout: float) -> list[tuple[int, int]]:
        """Block until the epoll is readable or ``timeout`` (-1: forever) passed;
        return what the poll saw."""
        try:
            return self._wakeups.poll(timeout)
        except ValueError:  # closed by another thread
            self._check_usable()
            raise

    def _check_fds(self) -> None:
        """A quiet tick: check that nobody closed our pidfds (their deaths would go unseen)."""
        self._fds_checked_at = time.monotonic()
        with _process.LOCK:
            if self._closed:
                return
            before = len(self._wakeups.lost)
            self._wakeups.verify(list(self._ledger.running))
            for pid in self._wakeups.lost[before:]:
                child = self._ledger.handle(pid)
                if child is not None:
                    child._pidfd = None
                    self._watcher.add(child)
                    self._start_peek_thread(pid)

    # -- the event loop interface ------------------------------------------
    def fileno(self) -> int:
        """An fd that is readable when :meth:`dispatch` has work (an epoll fd).

        Add it to your loop for reading (``selectors``, ``loop.add_reader``,
        ``trio.lowlevel.wait_readable``) and call :meth:`dispatch` when it fires.
        """
        self._check_usable()
        return self._wakeups.fileno()

    def dispatch(self) -> int:
        """Reap what is ready and run due callbacks; never blocks. Returns how many
        events were delivered. A callback's exception propagates after the context
        is consistent again; the events after it stay queued for the next call.
        Raises :class:`FdLostError` once if someone closed a pidfd of childproc's."""
        self._enter()
        self._collect()
        delivered = self._deliver()
        self._report_lost_fds()
        return delivered

    def _outstanding(self) -> bool:
        """Something may still be delivered by waiting."""
        if self._ledger.running or self._ledger.next_event() is not None or self._reaping.zombies:
            return True
        # Modes that reap every child: the host's children are delivered too.
        return self._plan.rules.reaper is Reaper.ANY_CHILD and bool(_process.foreign_children())

    def wait(self, timeout: float | None = None) -> int:
        """Block until at least one event was delivered by this call, or ``timeout``
        seconds passed (None: no limit). Returns the number delivered (0 on timeout,
        and at once when nothing is outstanding: no child, no undelivered event).

        Raises :class:`ClosedError` if the context is closed meanwhile.
        """
        deadline = None
        if timeout is not None:
            try:
                ok = timeout >= 0 and timeout is not True and timeout is not False
                deadline = time.monotonic() + timeout
            except TypeError:
                ok = False
            if not ok:
                raise InvalidArgumentError(f"timeout must be None or a number >= 0, not {timeout!r}")
        token = object()
        try:
            self._waiters[token] = threading.get_ident()
            self._enter()
            if HANDLER.uses(self._handler_key):  # report a replaced handler now, not after a sleep
                with _process.LOCK:
                    HANDLER.check()
            while True:
                # Sleep first (anything already ready makes it return at once), then
                # dispatch: one dispatch per wake-up, not an idle one before each sleep.
                ready = None
                if self._ledger.next_event() is None:
                    with _process.LOCK:
                        if not self._outstanding():
                            return 0
                    remaining = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
                    tick = _HANDLER_RECHECK_S if remaining < 0 else min(remaining, _HANDLER_RECHECK_S)
                    ready = self._sleep(tick)
                if _process.CHORES:
                    _process.run_chores()
                self._collect(ready)
                delivered = self._deliver()
                self._report_lost_fds()
                if delivered:
                    return delivered
                if deadline is not None and time.monotonic() >= deadline:
                    return 0
        finally:
            self._waiting_end(token)

    def start_dispatch_thread(self) -> threading.Thread:
        """Run :meth:`wait` forever on a daemon thread, for hosts with no loop.

        Callbacks then run on that thread; an exception from one is logged on
        logger ``childproc`` and the thread goes on. The thread ends at
        :meth:`close`. Note that a running thread makes a later ``os.fork()`` in
        this process unsafe in general (Python 3.12+ warns): prefer
        :meth:`fileno` in a loop you already have, or :meth:`spawn`.
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
                if self.wait(_HANDLER_RECHECK_S) == 0 and not self._closed:
                    self._sleep(_HANDLER_RECHECK_S)  # nothing outstanding: idle, woken by any new child
            except (ClosedError, ForkedContextError):
                return
            except Exception:
                if self._closed:
                    return
                log.exception("a childproc callback raised on the dispatch thread")

    # -- MAINLOOP -----------------------------------------------------------
    def _require_app_reports(self, what: str) -> None:
        if not self._plan.rules.app_reports:
            raise StateError(
                f"{what} is only for SigchldOwner.MAINLOOP, where the application reaps; this "
                f"context is in {self.mode.name} mode and reaps its children itself"
            )

    def childproc_reaped(self, pid: int, status: int) -> bool:
        """MAINLOOP: the application reaped ``pid`` with wait status ``status``.

        Returns True if the pid was this context's (its callback has then run,
        from this call, and a ``child_fork`` callback gets ``status`` exactly as
        given), False otherwise. A stop or continue status (from
        ``waitpid(..., WUNTRACED | WCONTINUED)``) is reported the same way.
        Do not call it from a signal handler: report from your main loop.
        """
        _validate_pid(pid, "pid")
        if not isinstance(status, int) or isinstance(status, bool) or not 0 <= status <= 0xFFFF:
            raise InvalidArgumentError(f"status must be a wait status (int 0..0xffff), not {status!r}")
        try:
            ChildEvent.from_wait_status(pid, status)
        except ValueError:
            raise InvalidArgumentError(
                f"status {status:#x} is not a wait status (exited, killed, stopped or continued)"
            ) from None
        self._enter()
        self._require_app_reports("childproc_reaped()")
        with _process.LOCK:
            self._check_usable()
            ref = _process.OWNERS.get(pid)
            owner = (
                Owner.THIS_CONTEXT
                if ref is self._ref
                else Owner.NOBODY
                if ref is None
                else Owner.OTHER_CONTEXT
            )
            child = self._ledger.handle(pid)
            if self._plan.route[owner] is not Destination.CHILD_CALLBACK or child is None:
                return False
            if os.WIFSTOPPED(status) or os.WIFCONTINUED(status):
                self._ledger.changed(pid, status, None)
            else:
                self._reaping.accept_exit(pid, status, None)
            self._sync_handler_use_locked()
        self._deliver()
        if self._waiters:
            self._wakeups.waker.poke()  # a thread in child.wait() may be waiting for this one
        return True

    def sigchld_occurred(self) -> int:
        """MAINLOOP: "a SIGCHLD happened": reap and deliver this context's dead children.

        For applications that reap only their own children (``waitpid(pid)``), so
        childproc's stay for childproc. Checks each of this context's children
        (``waitid(P_PID, pid, WNOHANG)``). Returns the number of events delivered.
        """
        self._enter()
        self._require_app_reports("sigchld_occurred()")
        with _process.LOCK:
            self._check_usable()
            self._dirty = True
            scan(self._ledger.running_handles(), self._reaping.journal)
            self._reaping.apply(self._plan, self._watcher)
            self._dirty = False
        delivered = self._deliver()
        if delivered and self._waiters:
            self._wakeups.waker.poke()
        return delivered

    # -- fork server children -------------------------------------------------
    def watch_served(
        self,
        served: ServedLike,
        on_event: EventCallback | None = None,
        *,
        kill_on_close: bool = False,
    ) -> Child:
        """Watch a child a :class:`~childproc.forkserver.ForkServer` made: its exit
        comes through this context's dispatch like any other child's.

        Takes over the served child's exit fd and pidfd (signals go through the
        pidfd; there is no safe way without one). The exit is reaped by the server;
        only exit events are reported (``reap_after_callback`` does not apply).
        """
        if served.exit_fd is None:
            raise InvalidArgumentError("watch_served() needs a child forked with exit_fd=True")
        if on_event is not None:
            check_callback(on_event, 2, "on_event", "on_event(child, event)")
        self._enter()
        with _process.LOCK:
            self._check_usable()
            if self._ledger.is_running(served.pid):
                raise AlreadyWatchedError(f"pid {served.pid} is already watched by this context")
            exit_fd, pidfd = served.detach_fds()
            assert exit_fd is not None
            child = Child(
                self,
                served.pid,
                on_event,
                events=os.WEXITED,
                oneshot=False,
                defer_reap=False,
                kill_on_close=kill_on_close,
            )
            if pidfd is not None:
                child._pidfd = self._wakeups.take_pidfd(served.pid, pidfd)
            child._exit_fd = self._wakeups.add_served(child, exit_fd)
            self._ledger.add(served.pid, child)
        return child

    # -- teardown -----------------------------------------------------------
    def close(self) -> None:
        """Stop managing children; release the handler, fds and registry entries.

        * Children with ``kill_on_close`` are killed with SIGKILL and reaped.
        * Children that have exited are reaped (so no zombie of ours is left),
          except in MAINLOOP, where the application reaps; undelivered callbacks
          are dropped: call :meth:`dispatch` first if you want them.
        * Children still running are left running, and a :class:`ResourceWarning`
          names them. childproc reaps each when it exits, without its callback
          (the process-wide orphanage, a thread alive while there are orphans), so
          no zombie is left; in MAINLOOP the application reaps them.
        * The SIGCHLD handler is restored if this was its last user (on a worker
          thread: at the next childproc call on the main thread).
        * A dispatch thread is stopped; other threads blocked in :meth:`wait`
          wake up with :class:`ClosedError`.

        Idempotent; safe from a callback. In a forked child it only marks the
        inherited context closed. Interrupted (``KeyboardInterrupt``), the rest
        of the teardown is done by the next childproc call, or by ``close()`` again.
        """
        if self._torn_down:
            return
        if self._forked or self._pid != os.getpid():
            self._closed = True
            return
        _process.refuse_reentry()
        self._closed = True
        _process.teardown_started(self)
        self.finish_teardown()

    def finish_teardown(self) -> None:
        """Carry out (or finish) the teardown :meth:`close` began."""
        orphans: list[int] = []
        with self._teardown_lock:
            if self._torn_down:
                return
            with _process.LOCK:
                self._recover_locked()
                self._teardown_children_locked(orphans)
            self._wakeups.waker.poke()
            if self._doomed:
                self._reap_killed(self._doomed)
                del self._doomed[:]
            me = threading.get_ident()
            thread = self._thread
            if thread is not None and thread.ident != me:
                thread.join()
            with self._waiters_cv:
                self._waiters_cv.wait_for(
                    lambda: all(t == me for t in list(self._waiters.values())), timeout=5.0
                )
            with _process.LOCK:
                self._close_gone_fds()
                self._wakeups.close()
                self._torn_down = True
            _process.teardown_done(self)
        if orphans:
            warnings.warn(
                f"childproc.Context closed while child(ren) {', '.join(map(str, orphans))} still ran: "
                + (
                    "the application reaps them (MAINLOOP)"
                    if self._plan.rules.reaper is Reaper.APPLICATION
                    else "childproc reaps them when they exit, without their callbacks"
                )
                + ". Wait for children before closing (child.wait(), ctx.wait()), or spawn them with "
                "kill_on_close=True to have close() kill them.",
                ResourceWarning,
                stacklevel=3,
            )
        _process.run_chores()

    def _teardown_children_locked(self, orphans: list[int]) -> None:
        """Kill, reap or hand over every child; drop the queue; leave the handler. LOCK held."""
        ledger = self._ledger
        app_reaps = self._plan.rules.reaper is Reaper.APPLICATION
        for child in ledger.running_handles():
            pid = child._pid
            child._defer_reap = False  # closing: reap now, no callback will run
            if child.kill_on_close and self._kill_locked(child):
                if child not in self._doomed:
                    self._doomed.append(child)
                ledger.forget(pid, Move.RELEASE)
                continue
            if not app_reaps and child._exit_fd is None:
                scan([child], self._reaping.journal)  # exited already? reaped into the journal
                if self._reaping.journal.exited or self._reaping.journal.peeked:
                    self._reaping.journal.exited.clear()
                    self._reaping.journal.peeked.clear()
                    ledger.forget(pid, Move.ABANDON)
                    child.phase = Phase.RELEASED
                    self._child_gone_locked(child)
                    continue
                self._reaping.journal.gone.clear()
                self._reaping.journal.fd_lost.clear()
            if child._exit_fd is None:
                orphans.append(pid)
            if not app_reaps and child._exit_fd is None:
                ORPHANAGE.take(pid, self._wakeups.pidfd_of(pid))  # the orphanage's now: then forget it
                self._wakeups.disown_pidfd(pid)
                child._pidfd = None
            ledger.forget(pid, Move.ABANDON)
            self._child_gone_locked(child)
        for child in list(self._reaping.zombies.values()):
            reap_zombie(child)
            child.phase = Phase.RELEASED
            self._child_gone_locked(child)
        ledger.discard_queue()
        HANDLER.set_user(self._handler_key, self._wakeups.waker.poke, False)  # never raises

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._torn_down or self._forked or self._pid != os.getpid():
                return
        except AttributeError:  # __init__ failed
            return
        if not self._closed:
            warnings.warn(f"unclosed {self!r}: call close() or use 'with'", ResourceWarning, stacklevel=2)
            self._closed = True
            _process.teardown_started(self)
        if not _process.held_here():
            self.finish_teardown()

    def abandon_after_fork(self) -> None:
        """In a forked child: disable this inherited context and close its fds."""
        self._forked = True
        self._closed = True
        self._torn_down = True
        self._wakeups.abandon_after_fork()
        for child in self._ledger.running_handles():
            child._pidfd = None
