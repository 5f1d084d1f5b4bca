"""The Context: make or adopt children, learn exactly once when each dies.

How a death travels
-------------------
1. ``child_fork``/``fork``/``spawn``/``adopt`` create or take the child with the
   process lock held and register it (ledger, ``OWNERS``, watcher, pidfd in the
   context's epoll) before the lock is released, so no reaper anywhere in the
   process can take the pid unseen.
2. The child dies. The kernel makes its pidfd readable and sends SIGCHLD; the
   process-wide handler (where the mode uses one) pokes the self-pipe of every
   context that uses it. Either makes the context's epoll (``fileno()``)
   readable, on any thread, even while the main thread is blocked in C.
3. ``dispatch()`` (or ``wait()``) drains the pipe, asks the watcher to reap,
   and routes every reaped pid through :func:`childproc._policy.route`: ours
   into our ledger, another context's into its ledger (and pokes it), a
   foreign pid to ``reaped_callback`` or a warning. The child's handle is
   updated right there (state, final event), under the lock.
4. Delivery pops one event at a time and runs its callback with no lock held
   but the context's delivery lock (so callbacks run one at a time, in order,
   and may call back into the context). A popped event is delivered; if its
   callback raises, the rest stay queued and the exception propagates. A child
   whose reaping was deferred (``reap_after_callback``) is reaped right after
   its exit callback, even if that raised.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _process
from ._child import Child, ChildState, EventCallback, check_events
from ._errors import (
    AlreadyWatchedError,
    ChildExitedError,
    ChildStolenError,
    ClosedError,
    ForkedContextError,
    ForkError,
    InvalidArgumentError,
    NotOurChildError,
    PidfdUnavailableError,
    SpawnError,
    StateError,
    UnknownChildError,
)
from ._ledger import ChildCallback, Event, EventKind, Ledger
from ._policy import (
    ROUTE,
    RULES,
    Destination,
    ForeignCheck,
    Owner,
    Reaper,
    SigchldOwner,
    choose_watcher,
    rules_for,
    wants_handler,
)
from ._spawn import spawn_process
from ._status import ChildEvent, describe_status
from ._waker import CLOSED_WAKER, Waker
from ._watchers import Reaped, Watcher, make_watcher
from ._watchers import pidfd as _pidfd
from ._watchers._base import reap_zombie
from ._watchers.scan import scan
from .forkserver import EXIT_EVENT, ServedChild

if TYPE_CHECKING:
    from ._spawn import Argv

__all__ = ["Context", "ForkReplacement", "Hooks", "ReapedCallback"]


log = logging.getLogger("childproc")

#: ``fork_replacement(user) -> pid``: called instead of ``os.fork()``.
ForkReplacement = Callable[[Any], int]
#: ``reaped_callback(pid, status, user) -> bool | None`` for pids nobody in childproc made.
ReapedCallback = Callable[[int, int, Any], bool | None]

_HANDLER_RECHECK_S = 1.0  # how often a blocked wait() re-checks a handler it relies on
_EXIT_ONLY = os.WEXITED  # a child's ``events`` when it asked for its exit only
_EXITED = ChildState.EXITED
_CHILD_EXIT = EventKind.CHILD_EXIT
# (an Enum class's attributes go through EnumType.__getattr__: two more pages per fork)
_TO_CHILD_CALLBACK = Destination.CHILD_CALLBACK
_TO_OTHER_CONTEXT = Destination.OTHER_CONTEXT
_TO_REAPED_CALLBACK = Destination.REAPED_CALLBACK
_TO_WARNING = Destination.WARNING
_get_ident = threading.get_ident
_monotonic = time.monotonic
_getpid = os.getpid
_held_here = _process._held_here
_fallback_logged = False


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


def _validate_pid(pid: object, what: str) -> int:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise InvalidArgumentError(f"{what} must be a positive int pid, not {pid!r}")
    return pid


def _watch_in_thread(pid: int, waker: Waker) -> None:
    """Last-resort wake-up: block in waitid(WNOWAIT) on one pid, then poke.

    Used only for a child with no pidfd (unsupported, or fds exhausted) when
    nothing else would announce its death promptly: no handler (PIDFD mode,
    or one not installed yet), or a Python-level handler that runs only when the
    main thread gets to it, which may be blocked in C for seconds (the child was
    made on a worker thread). WNOWAIT peeks without reaping, so the mode's own
    reaper still reaps.
    """
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        pass
    waker.poke()


def _pid_of_pidfd(pidfd: int) -> int:
    """The pid a pidfd refers to (``Pid:`` in /proc/self/fdinfo)."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    raise InvalidArgumentError(f"fd {pidfd} is not a pidfd")


class _Plan:
    """What the policy tables say for one :class:`Hooks`, looked up once at
    ``setmode()`` rather than on every child.

    Every child's path reads its decisions here, as plain attributes of one
    object: after a ``fork()`` each object the parent touches costs it a page
    copy, so the hot path does not walk ``Hooks``, ``ModeRules`` and enums.
    """

    __slots__ = (
        "echild_means_stolen",
        "first_child_check",
        "fork_replacement",
        "pidfd_wakeups",
        "pidfds",
        "route_nobody",
        "route_other",
        "route_ours",
        "wants_handler",
    )

    def __init__(self, hooks: Hooks) -> None:
        mode, has_cb, pidfds = hooks.chldowner, hooks.reaped_callback is not None, _pidfd.supported()
        rules = RULES[mode]
        #: indexed by 2 * (has unreaped children) + (has stop/continue watchers)
        self.wants_handler = tuple(
            wants_handler(mode, children, pidfds, stops) for children in (0, 1) for stops in (0, 1)
        )
        routes = {owner: ROUTE.get((rules.reaper, owner, has_cb)) for owner in Owner}
        self.route_ours = routes[Owner.THIS_CONTEXT]
        self.route_other = routes[Owner.OTHER_CONTEXT]
        self.route_nobody = routes[Owner.NOBODY]
        #: pidfds work here: each child gets one.
        self.pidfds = pidfds
        #: ...and they wake the context (see ``ModeRules.pidfd_wakeups``).
        self.pidfd_wakeups = rules.pidfd_wakeups
        #: Refuse the first child while the process has children nobody here made.
        self.first_child_check = rules.foreign_children_check is ForeignCheck.FIRST_CHILD
        self.fork_replacement = hooks.fork_replacement
        #: ECHILD on a pid of ours means someone else reaped it; in MAINLOOP it only
        #: means the application got there first and will report it.
        self.echild_means_stolen = rules.reaper is not Reaper.APPLICATION


class Context:
    """A set of children and the machinery to learn, exactly once, when each dies.

    Thread safety: every method may be called from any thread. In the modes that
    use the SIGCHLD handler, call ``setmode`` (and the first fork) on the main
    thread where you can (``signal.signal`` works only there); on another thread
    the handler is installed by the next childproc call on the main thread, and
    children made meanwhile are watched through their pidfds.

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
        self._plan = _Plan(self._hooks)
        self._ledger: Ledger[Child] = Ledger()
        self._waker = Waker()
        try:
            self._epoll = select.epoll()
            self._epoll.register(self._waker.rfd, select.EPOLLIN)
        except BaseException:
            self._waker.close_read()
            self._waker.close_write()
            raise
        self._polled: dict[int, Child] = {}  # pidfd in the epoll -> its child
        self._zombies: dict[int, Child] = {}  # exit seen, reaping deferred
        self._served: dict[int, Child] = {}  # exit fd -> a fork server's child
        self._lost_why: dict[int, str] = {}  # pid -> why its status is lost, where not "stolen"
        self._stop_watchers = 0
        self._watcher: Watcher = make_watcher(choose_watcher(self.mode, _pidfd.supported()))
        self._delivery = threading.RLock()
        self._waiters_lock = threading.Lock()
        self._waiters_cv = threading.Condition(self._waiters_lock)
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
    def watcher(self) -> str:
        """The name of the mechanism that reaps this context's children (see the docs)."""
        return self._watcher.kind.name

    @property
    def children(self) -> frozenset[int]:
        """Pids this context made whose exit has not been delivered yet (a snapshot)."""
        _process.refuse_reentry()
        with _process.LOCK:
            return self._ledger.outstanding()

    def child(self, pid: int) -> Child:
        """The handle of running child ``pid`` (raises :class:`UnknownChildError`)."""
        _process.refuse_reentry()
        with _process.LOCK:
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
        """Raise if this context cannot be used here; carry out pending handler chores.
        One call and no more on the common path: every child passes here."""
        if self._closed or self._forked or self._pid != _getpid():
            self._check_usable()
        if _held_here():
            raise _process.reentry_error()
        if _process._pending:
            _process.run_chores()

    def _sync_handler_use_locked(self) -> None:
        """Make this context a user of the SIGCHLD handler, or not, as its plan says
        for its children now (those of a fork server do not count: their exits
        come on exit fds)."""
        children = len(self._ledger.running) - len(self._served)
        wanted = self._plan.wants_handler[(children > 0) * 2 + (self._stop_watchers > 0)]
        if (self in _process._users) != wanted:
            _process.set_handler_user(self, wanted)

    # -- configuration ------------------------------------------------------
    def setmode(self, hooks: Hooks | None = None, user: Any = None) -> None:
        """Choose who owns SIGCHLD (libxl's ``libxl_childproc_setmode``).

        ``hooks=None`` means ``Hooks()`` (LIBXL mode). ``user`` is passed to the
        hooks. Allowed only while the context has no outstanding children and no
        undelivered events. A mode that always needs the SIGCHLD handler installs
        it now (on the main thread; elsewhere at the next main-thread call).

        Raises :class:`StateError` with children outstanding,
        :class:`SigchldConflictError` if the mode needs the handler and a foreign
        SIGCHLD handler is installed, :class:`PidfdUnavailableError` for PIDFD
        without pidfds, :class:`InvalidArgumentError` for bad hooks.
        """
        global _fallback_logged
        if hooks is None:
            hooks = Hooks()
        if not isinstance(hooks, Hooks):
            raise InvalidArgumentError(f"setmode() takes a childproc.Hooks, not {hooks!r}")
        self._enter()
        rules = rules_for(hooks.chldowner)
        if rules.requires_pidfds and not _pidfd.supported():
            raise PidfdUnavailableError(
                f"{hooks.chldowner.name} needs pidfds (Linux >= 5.3, not blocked by seccomp) and this "
                "system has none; use SELECTIVE_REAP, which falls back to SIGCHLD and a per-child check"
            )
        with _process.LOCK:
            self._check_usable()
            if self._ledger.unreaped or self._ledger.has_events or self._zombies:
                raise StateError(
                    "setmode() while this context has children outstanding or events undelivered; "
                    "call setmode() before the first child, or after every child's callback ran"
                )
            if rules.foreign_children_check is ForeignCheck.SETMODE:
                self._refuse_foreign_children_locked(hooks.chldowner)
            old = (self._hooks, self._user, self._rules, self._plan, self._watcher)
            self._hooks, self._user, self._rules, self._plan = hooks, user, rules, _Plan(hooks)
            self._watcher = make_watcher(choose_watcher(hooks.chldowner, _pidfd.supported()))
            try:
                self._sync_handler_use_locked()
            except BaseException:
                self._hooks, self._user, self._rules, self._plan, self._watcher = old
                raise
        if rules.reaper is Reaper.OWN_CHILDREN and not _pidfd.supported() and not _fallback_logged:
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

        From a worker thread, when the handler is not installed yet, the child's
        death is seen through its pidfd (or, lacking one, a thread blocked in
        ``waitid(WNOWAIT)``), and the handler is installed by the next childproc
        call on the main thread.
        """
        if not callable(callback):
            raise InvalidArgumentError(
                f"child_fork() needs a callable callback(pid, status), not {callback!r}"
            )
        child = self._make(
            None,
            None,
            events=_EXIT_ONLY,
            oneshot=False,
            reap_after_callback=False,
            kill_on_close=False,
            on_exit_status=callback,
        )
        return 0 if child is None else child._pid

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
        return self._make(
            None,
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

        Costs the same from a 4 GiB parent as from a small one. ``argv[0]`` is
        looked up on ``PATH`` unless it contains a ``/``. ``env`` replaces the
        environment (default: this process's); ``cwd`` is the working directory;
        ``pass_fds`` stay open in the child at the same numbers; ``stdin``,
        ``stdout``, ``stderr`` are fds to put at 0, 1, 2. SIGPIPE and SIGXFSZ
        start at their defaults, as with ``subprocess``; so does SIGCHLD, and no
        signal is blocked (stricter than ``subprocess``, which passes an ignored
        SIGCHLD and the signal mask on). ``argv[0]`` without a ``/`` is looked up
        on the ``PATH`` of ``env`` (or of this process). The child is registered
        before anyone can reap it, in every mode. Other arguments as for
        :meth:`fork`.

        Raises :class:`SpawnError` (with ``errno``: ``ENOENT``, ``EACCES``,
        ``ENOTDIR``) if the program or ``cwd`` cannot be used.
        """
        if type(pass_fds) is not tuple and (  # the common case skips the ABC check
            not isinstance(pass_fds, Sequence) or isinstance(pass_fds, (str, bytes))
        ):
            raise InvalidArgumentError(f"pass_fds must be a sequence of fds, not {pass_fds!r}")

        def make() -> int:
            return spawn_process(
                argv, env=env, cwd=cwd, pass_fds=pass_fds, stdin=stdin, stdout=stdout, stderr=stderr
            )

        child = self._make(
            make,
            on_event,
            events=events if events is _EXIT_ONLY else check_events(events),
            oneshot=oneshot,
            reap_after_callback=reap_after_callback,
            kill_on_close=kill_on_close,
            spawn=True,
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
            pid = _pid_of_pidfd(pidfd)
            if pid <= 0:
                raise NotOurChildError(f"the process of pidfd {pidfd} has already exited and been reaped")
            fd = pidfd if own_pidfd else os.dup(pidfd)
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
            if fd is not None and fd != pidfd:
                os.close(fd)
            raise InvalidArgumentError(f"adopt() needs a child's pid (> 1), not {pid!r}")
        try:
            child = self._make(
                lambda: pid,
                on_event,
                events=check_events(events),
                oneshot=oneshot,
                reap_after_callback=reap_after_callback,
                kill_on_close=kill_on_close,
                adopt_pidfd=fd,
                adopting=True,
            )
        except BaseException:
            if fd is not None and fd != pidfd:
                os.close(fd)
            raise
        assert child is not None
        self._waker.poke()  # it may already be a zombie: look now
        return child

    def _fork_by_replacement(self, replacement: Callable[[Any], int]) -> int:
        pid = replacement(self._user)
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
            raise InvalidArgumentError(
                f"fork_replacement must return a pid (int >= 0) or raise OSError, not {pid!r}"
            )
        return pid

    def _make(
        self,
        make_pid: Callable[[], int] | None,
        on_event: EventCallback | None,
        *,
        events: int,
        oneshot: bool,
        reap_after_callback: bool,
        kill_on_close: bool,
        spawn: bool = False,
        adopt_pidfd: int | None = None,
        adopting: bool = False,
        on_exit_status: ChildCallback | None = None,
    ) -> Child | None:
        """Make (or take) a child and register it, all under the process lock.

        ``make_pid`` None means fork (through ``fork_replacement`` if there is
        one). ``events`` comes checked. Every child passes here: see ``_Plan``.
        """
        if on_event is not None and not callable(on_event):
            raise InvalidArgumentError(f"on_event must be callable(child, event) or None, not {on_event!r}")
        self._enter()
        plan = self._plan
        watches_stops = events != _EXIT_ONLY
        if watches_stops and not self._rules.stop_events:
            raise InvalidArgumentError(
                f"stop/continue events need SIGCHLD (pidfds only report exits), and {self.mode.name} "
                "mode never uses it; use SELECTIVE_REAP for them"
            )
        if reap_after_callback and not self._rules.deferred_reap:
            raise InvalidArgumentError(
                f"reap_after_callback needs a mode that reaps only its own children (SELECTIVE_REAP, "
                f"PIDFD); {self.mode.name} reaps by waitpid(-1) or leaves reaping to the application"
            )
        with _process.LOCK:
            if self._closed:  # closed by another thread since _enter() checked
                self._check_usable()
            if adopting:
                assert make_pid is not None
                pid = make_pid()
                self._check_adoptable_locked(pid, adopt_pidfd)
            if plan.first_child_check and not self._ledger.running:
                self._refuse_foreign_children_locked(self.mode, pid if adopting else None)
            # (as in _sync_handler_use_locked, counting this child)
            if plan.wants_handler[2 + (watches_stops or self._stop_watchers > 0)]:
                _process.check_handler()
                if self not in _process._users:
                    _process.set_handler_user(self, True)
            # Made before the fork, its pid filled in after: after fork() every page
            # the parent writes is copied while the child shares it (3-4 us each),
            # so the parent does as little as it can between fork() and its next wait.
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
            if not adopting:
                try:
                    if make_pid is not None:
                        pid = make_pid()
                    elif plan.fork_replacement is None:
                        pid = os.fork()  # (looked up each time: gevent and tests patch it)
                    else:
                        pid = self._fork_by_replacement(plan.fork_replacement)
                except OSError as exc:
                    self._sync_handler_use_locked()
                    cls = SpawnError if spawn else ForkError
                    what = "posix_spawn" if spawn else "fork"
                    raise cls(exc.errno or errno.EAGAIN, f"{what} failed: {exc.strerror or exc}") from exc
                except BaseException:
                    self._sync_handler_use_locked()
                    raise
                if pid == 0:
                    # A fork_replacement may have forked behind os.fork's at-fork hooks.
                    _process.postfork_child_noexec()
                    return None
            child._pid = pid
            self._register_locked(child, adopt_pidfd)
        return child

    def _refuse_foreign_children_locked(self, mode: SigchldOwner, except_pid: int | None = None) -> None:
        foreign = [p for p in _process.foreign_children() if p != except_pid]
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

    def _register_locked(self, child: Child, pidfd: int | None) -> None:
        pid = child._pid
        other = _process.OWNERS.get(pid)
        if other is not None:
            # The kernel reused a pid whose death another context has not seen:
            # possible only if someone reaped it behind childproc's back.
            stale = other._ledger.handle(pid)
            if stale is not None and other._ledger.stolen(pid):
                other._child_gone_locked(stale)
                other._waker.poke()
        self._ledger.add(pid, child)
        _process.OWNERS[pid] = self
        plan = self._plan
        if pidfd is None and plan.pidfds:
            pidfd = _pidfd.open_pidfd(pid)
        child._pidfd = pidfd
        if pidfd is not None and plan.pidfd_wakeups:
            try:
                self._epoll.register(pidfd, select.EPOLLIN)
            except OSError:  # ENOSPC (max_user_watches), ENOMEM: watched without it
                pass
            else:
                child._polled = True
                self._polled[pidfd] = child
        if child._watches_stops:
            self._stop_watchers += 1
        self._watcher.add(child)
        if (
            not child._polled
            and plan.pidfd_wakeups
            and not (_process.handler_installed() and _process.on_main_thread())
        ):
            # Nothing would announce this death promptly: no pidfd, and either no
            # handler or one that waits for a (possibly blocked) main thread.
            threading.Thread(
                target=_watch_in_thread, args=(pid, self._waker), name=f"childproc-peek-{pid}", daemon=True
            ).start()

    def _unpoll_locked(self, child: Child) -> None:
        if child._polled and child._pidfd is not None:
            child._polled = False
            del self._polled[child._pidfd]
            try:
                self._epoll.unregister(child._pidfd)
            except (OSError, ValueError):
                pass

    def _child_gone_locked(self, child: Child) -> None:
        """``child`` is reaped, stolen or released: drop what watched it. LOCK held."""
        pid = child._pid
        self._watcher.remove(pid)
        if self._zombies:
            self._zombies.pop(pid, None)
        owners = _process.OWNERS
        if owners.get(pid) is self:
            del owners[pid]
        if child._watches_stops:
            child._watches_stops = False
            self._stop_watchers -= 1
        self._unpoll_locked(child)
        fd, child._pidfd = child._pidfd, None
        if fd is not None:
            os.close(fd)
        exit_fd, child._exit_fd = child._exit_fd, None
        if exit_fd is not None:
            del self._served[exit_fd]
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(exit_fd)
            os.close(exit_fd)

    # -- reaping ------------------------------------------------------------
    def _child_died_locked(self, child: Child, status: int, uid: int | None, reaped: bool) -> None:
        """Record ``child``'s death (reaped, or seen with WNOWAIT). LOCK held."""
        child._state = _EXITED
        child._status, child._uid = status, uid  # (Child.final makes the ChildEvent when asked)
        recorded = self._ledger.exited(child._pid, status, uid)  # False: released meanwhile
        if reaped:
            self._child_gone_locked(child)
        elif recorded:
            child._zombie = True
            self._zombies[child._pid] = child
            self._unpoll_locked(child)  # a zombie's pidfd stays readable

    def _child_changed_locked(self, child: Child, status: int, uid: int | None) -> None:
        """``child`` stopped or continued. LOCK held."""
        stopped = os.WIFSTOPPED(status)
        child._state = ChildState.STOPPED if stopped else ChildState.RUNNING
        wanted = child.events & (os.WSTOPPED if stopped else os.WCONTINUED)
        if (
            wanted
            and child._watches_stops
            and self._ledger.changed(child._pid, status, uid)
            and child.oneshot
        ):
            child._watches_stops = False
            self._stop_watchers -= 1
            self._watcher.add(child)

    def _served_exit_locked(self, child: Child, block: bool = False) -> None:
        """Read a fork server's exit record for ``child`` and record its death. LOCK held."""
        fd = child._exit_fd
        if fd is None:
            return
        try:
            os.set_blocking(fd, block)
            data = os.read(fd, EXIT_EVENT.size)
        except BlockingIOError:
            return
        if len(data) == EXIT_EVENT.size:
            _, status = EXIT_EVENT.unpack(data)
            self._child_died_locked(child, status, None, reaped=True)
        else:  # the server went away before the child: its status is lost
            child._state = ChildState.EXITED
            child._done = True
            if self._ledger.stolen(child._pid):
                self._lost_why[child._pid] = (
                    f"the fork server that made child {child._pid} stopped (stop_server_only) or died "
                    "before the child exited, so nobody can report its exit status"
                )
                self._child_gone_locked(child)

    def watch_served(
        self,
        served: ServedChild,
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
        if on_event is not None and not callable(on_event):
            raise InvalidArgumentError(f"on_event must be callable(child, event) or None, not {on_event!r}")
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
            child._pidfd = pidfd
            child._exit_fd = exit_fd
            self._ledger.add(served.pid, child)
            self._served[exit_fd] = child
            self._epoll.register(exit_fd, select.EPOLLIN)
        return child

    def _route_locked(self, reaped: Reaped) -> None:
        """Send each reaped pid where :func:`route` says. LOCK held."""
        plan = self._plan
        owners = _process.OWNERS
        for pid, status, uid in reaped.changed:
            child = self._ledger.handle(pid)
            if child is None:
                continue
            if os.WIFSTOPPED(status) or os.WIFCONTINUED(status):
                self._child_changed_locked(child, status, uid)
            else:
                self._child_died_locked(child, status, uid, reaped=False)
        for pid, status, uid in reaped.exited:
            owner_ctx = owners.get(pid)
            dest = (
                plan.route_ours
                if owner_ctx is self
                else plan.route_nobody
                if owner_ctx is None
                else plan.route_other
            )
            if dest is _TO_CHILD_CALLBACK or dest is _TO_OTHER_CONTEXT:
                assert owner_ctx is not None
                child = owner_ctx._ledger.running.get(pid) or owner_ctx._zombies.get(pid)
                if child is not None:
                    owner_ctx._child_died_locked(child, status, uid, reaped=True)
                if owner_ctx is not self:
                    owner_ctx._sync_handler_use_locked()
                    owner_ctx._waker.poke()
            elif dest is _TO_REAPED_CALLBACK:
                self._ledger.foreign(pid, status, EventKind.FOREIGN, uid)
            elif dest is _TO_WARNING:
                self._ledger.foreign(pid, status, EventKind.UNKNOWN, uid)
            else:  # the watcher reaped what this mode never reaps: a bug upstream
                raise AssertionError(f"{self.mode.name} reaped pid {pid}, which it cannot route ({dest})")
        if reaped.gone and plan.echild_means_stolen:
            for pid in reaped.gone:
                child = self._ledger.handle(pid)
                if child is not None and self._ledger.stolen(pid):
                    child._state = ChildState.EXITED
                    child._done = True
                    self._child_gone_locked(child)
        self._sync_handler_use_locked()

    def _collect(self, ready: list[tuple[int, int]] | None = None) -> None:
        """Reap whatever the epoll says is ready, without blocking.

        ``ready``: what a ``poll`` of the epoll just returned (``wait()`` passes
        its own, saving a second poll); None polls now. A readiness that another
        thread handled meanwhile is harmless: every check below is non-blocking.
        With the SIGCHLD handler in use it polls again all the same: the handler
        pokes the self-pipe just after the poll that saw a child's pidfd (it runs
        between bytecodes), and taking both now saves a whole empty round later.
        All under the process lock: the handler check comes before the self-pipe
        is drained, so a raise never swallows a wake-up.
        """
        with _process.LOCK:
            if self._closed:  # closed by another thread since _enter() checked
                raise ClosedError("this childproc Context is closed; create a new one")
            uses_handler = self in _process._users
            if uses_handler:
                _process.check_handler()
            if ready is None or uses_handler:
                ready = self._epoll.poll(0)
            signalled = False
            woken: list[Child] = []
            rfd = self._waker.rfd
            polled = self._polled
            served: list[Child] = []
            for fd, _ in ready:
                if fd == rfd:
                    signalled = True
                elif fd in self._served:
                    served.append(self._served[fd])
                else:
                    child = polled.get(fd)
                    if child is not None:
                        woken.append(child)
            for child in served:
                self._served_exit_locked(child)
            if signalled:
                self._waker.drain()
            if not (signalled or woken):
                return
            self._route_locked(self._watcher.reap(woken, signalled))

    # -- delivery -----------------------------------------------------------
    def _deliver(self) -> int:
        delivered = 0
        ledger = self._ledger
        with self._delivery:
            while not self._closed and ledger.queue:  # (re-checked under the lock)
                with _process.LOCK:
                    event = self._ledger.pop()
                if event is None:
                    break
                try:
                    self._invoke(event)
                except BaseException:
                    if ledger.queue and not self._closed:
                        self._waker.poke()  # keep fileno() readable for the rest
                    raise
                finally:
                    delivered += 1
        return delivered

    def _invoke(self, event: Event[Child]) -> None:
        child = event.callback
        if child is not None:
            is_exit = event.kind is _CHILD_EXIT
            if is_exit:
                child._done = True
            try:
                if child._released:
                    return  # (the finally below still reaps a zombie)
                if child._on_exit_status is not None:
                    child._on_exit_status(event.pid, event.status)  # child_fork: exits only
                elif child._on_event is not None:
                    final = child.final if is_exit else None
                    if final is None:
                        final = ChildEvent.from_wait_status(event.pid, event.status, event.uid)
                    child._on_event(child, final)
            finally:
                if is_exit and child._zombie:
                    self._reap_zombie(child)
        elif event.kind is EventKind.FOREIGN:
            cb = self._hooks.reaped_callback
            known = cb(event.pid, event.status, self._user) if cb is not None else False
            if known is False:
                self._warn_unknown(event)
        elif event.kind is EventKind.UNKNOWN:
            self._warn_unknown(event)
        else:
            why = self._lost_why.pop(event.pid, None)
            if why is not None:
                raise ChildStolenError(why, event.pid)
            raise ChildStolenError(
                f"child {event.pid} of this context was reaped by someone else, so its exit "
                f"status is lost: something in this process calls waitpid() on pids it did not "
                f"make while childproc is in {self.mode.name} mode (see the mode guide)",
                event.pid,
            )

    def _reap_zombie(self, child: Child) -> None:
        """Reap a child whose exit callback ran while it was a zombie."""
        with _process.LOCK:
            if not child._zombie:
                return
            child._zombie = False
            reap_zombie(child)
            self._child_gone_locked(child)
            self._sync_handler_use_locked()

    def _warn_unknown(self, event: Event[Child]) -> None:
        log.warning(
            "unknown child [%d] %s (reaped by childproc in %s mode)",
            event.pid,
            describe_status(event.status),
            self.mode.name,
        )

    # -- handles --------------------------------------------------------------
    def _signal_child(self, child: Child, sig: int) -> None:
        if not isinstance(sig, int) or isinstance(sig, bool) or not 0 <= sig < signal.NSIG:
            raise InvalidArgumentError(f"not a signal number: {sig!r}")
        _process.refuse_reentry()
        with _process.LOCK:
            if child._state is ChildState.EXITED or child._released:
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
            if self._rules.reaper is Reaper.APPLICATION:
                raise StateError(
                    f"cannot signal child {child._pid} safely: there is no pidfd for it, and in "
                    "MAINLOOP the application reaps, so its pid may already name another process"
                )
            # Unreaped, and only childproc reaps it (the mode's promise): the pid is still its.
            os.kill(child._pid, sig)

    def _release_child(self, child: Child) -> None:
        _process.refuse_reentry()
        with _process.LOCK:
            if child._released:
                return
            child._released = True
            child._done = True
            if child._zombie:
                child._zombie = False
                reap_zombie(child)  # its exit was seen
                self._child_gone_locked(child)
                self._sync_handler_use_locked()
                return
            if child.context is not self or not self._ledger.forget(child._pid):
                return  # already gone
            kill = child.kill_on_close and self._kill_locked(child)
            if not kill:
                self._child_gone_locked(child)
                self._sync_handler_use_locked()
        if kill:
            self._reap_killed([child])

    def _kill_locked(self, child: Child) -> bool:
        """SIGKILL an owned child; False where that cannot be done safely. LOCK held."""
        try:
            if child._pidfd is not None:
                signal.pidfd_send_signal(child._pidfd, signal.SIGKILL)
            elif self._rules.reaper is Reaper.APPLICATION or child._exit_fd is not None:
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
                    os.set_blocking(child._exit_fd, True)
                    os.read(child._exit_fd, EXIT_EVENT.size)  # the server reaps it
                elif child._pidfd is not None:
                    os.waitid(os.P_PIDFD, child._pidfd, os.WEXITED)
                else:
                    os.waitpid(child._pid, 0)
            except (ChildProcessError, OSError):
                pass  # someone else reaped it meanwhile
        with _process.LOCK:
            for child in children:
                child._state = ChildState.EXITED
                self._child_gone_locked(child)
            if not self._closed:
                self._sync_handler_use_locked()

    def _wait_child(self, child: Child, timeout: float | None) -> ChildEvent | None:
        """Dispatch until ``child``'s exit was delivered, by this thread or another
        (in MAINLOOP, the thread calling childproc_reaped pokes the waker)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        me = self._waiting_begin()
        try:
            while True:
                self.dispatch()
                if child._done:
                    return child.final
                remaining = -1.0 if deadline is None else deadline - time.monotonic()
                if deadline is not None and remaining <= 0:
                    return None
                self._sleep(_HANDLER_RECHECK_S if remaining < 0 else min(remaining, _HANDLER_RECHECK_S))
        finally:
            self._waiting_end(me)

    # Threads blocked in the context are counted, so that close() can wait for
    # them to leave. Plain methods around a try/finally, not a context manager:
    # wait() is on every child's path.
    def _waiting_begin(self) -> int:
        me = _get_ident()
        with self._waiters_lock:
            self._waiters[me] = self._waiters.get(me, 0) + 1
        return me

    def _waiting_end(self, me: int) -> None:
        with self._waiters_lock:
            depth = self._waiters[me] - 1
            if depth:
                self._waiters[me] = depth
            else:
                del self._waiters[me]
            if self._closed:  # close() may be waiting for us (it set _closed first)
                self._waiters_cv.notify_all()

    def _sleep(self, timeout: float) -> list[tuple[int, int]]:
        """Block until the epoll is readable or ``timeout`` (-1: forever) passed;
        return what the poll saw."""
        try:
            return self._epoll.poll(timeout)
        except ValueError:  # closed by another thread
            self._check_usable()
            raise

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
        deadline = None
        if timeout is not None:
            try:
                ok = timeout >= 0 and timeout is not True and timeout is not False
                deadline = _monotonic() + timeout
            except TypeError:
                ok = False
            if not ok:
                raise InvalidArgumentError(f"timeout must be None or a number >= 0, not {timeout!r}")
        me = self._waiting_begin()
        try:
            self._enter()
            if self in _process._users:  # report a replaced handler now, not after a sleep
                with _process.LOCK:
                    _process.check_handler()
            queue = self._ledger.queue
            while True:
                # Sleep first (anything already ready makes it return at once), then
                # dispatch: one dispatch per wake-up, not an idle one before each sleep.
                ready = None
                if not queue:
                    remaining = -1.0 if deadline is None else deadline - _monotonic()
                    if remaining < 0 and deadline is not None:
                        remaining = 0.0
                    if self in _process._users and _process._installed:
                        remaining = (
                            _HANDLER_RECHECK_S if remaining < 0 else min(remaining, _HANDLER_RECHECK_S)
                        )
                    ready = self._sleep(remaining)
                if _process._pending:
                    _process.run_chores()
                self._collect(ready)
                delivered = self._deliver()
                if delivered:
                    return delivered
                if deadline is not None and _monotonic() >= deadline:
                    return 0
        finally:
            self._waiting_end(me)

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
            owner_ctx = _process.OWNERS.get(pid)
            plan = self._plan
            dest = (
                plan.route_ours
                if owner_ctx is self
                else plan.route_nobody
                if owner_ctx is None
                else plan.route_other
            )
            child = self._ledger.handle(pid)
            if dest is not Destination.CHILD_CALLBACK or child is None:
                return False
            if os.WIFSTOPPED(status) or os.WIFCONTINUED(status):
                self._child_changed_locked(child, status, None)
            else:
                self._child_died_locked(child, status, None, reaped=True)
        self._deliver()
        if self._waiters:
            self._waker.poke()  # a thread in child.wait() may be waiting for this one
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
            self._route_locked(scan(self._ledger.running_handles(), Reaped()))
        delivered = self._deliver()
        if delivered and self._waiters:
            self._waker.poke()
        return delivered

    # -- teardown -----------------------------------------------------------
    def close(self) -> None:
        """Stop managing children; release the handler, fds and registry entries.

        * Children with ``kill_on_close`` are killed with SIGKILL and reaped.
        * Other children of this context that have exited are reaped (so no
          zombie of ours is left), except in MAINLOOP, where the application
          reaps; undelivered callbacks are dropped: call :meth:`dispatch` first
          if you want them.
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
        doomed: list[Child] = []
        _process.refuse_reentry()
        with _process.LOCK:
            if self._closed:
                return
            self._closed = True
            try:
                running = self._ledger.running_handles()
                for child in running:
                    child._defer_reap = False  # closing: reap now, no callback will run
                    if child.kill_on_close and self._kill_locked(child):
                        doomed.append(child)
                if self._rules.reaper is not Reaper.APPLICATION:
                    scan([c for c in running if c not in doomed and c._exit_fd is None], Reaped())
                for child in list(self._zombies.values()):
                    reap_zombie(child)
            finally:
                self._ledger.forget_running()
                for child in running:
                    # No more signals through the handle: childproc no longer
                    # knows when the pid is reaped, so it may name someone else.
                    child._released = True
                    child._done = True
                    if child not in doomed:
                        self._child_gone_locked(child)
                for child in list(self._zombies.values()):
                    self._child_gone_locked(child)
                self._ledger.discard_queue()
                _process.set_handler_user(self, False)  # never raises
        waker = self._waker
        waker.poke()
        try:
            if doomed:
                self._reap_killed(doomed)
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
            self._waker = CLOSED_WAKER
        _process.run_chores()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _abandon_after_fork(self) -> None:
        """In a forked child: disable this inherited context and close its fds."""
        self._forked = True
        for child in self._ledger.running_handles() + list(self._zombies.values()):
            fd, child._pidfd = child._pidfd, None
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        for fd in list(self._served):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._served.clear()
        self._polled.clear()
        try:
            self._epoll.close()
        except OSError:  # pragma: no cover
            pass
        self._waker.close_read()
        self._waker.close_write()
