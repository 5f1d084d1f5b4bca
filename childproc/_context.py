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

import logging
import os
import select
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from . import _process, _stdio, _teardown, _trees
from ._child import Child, EventCallback, check_events
from ._children import Children, refuse_ignored
from ._creators import Adopt, Creator, Fork, Spawn
from ._delivery import Delivery
from ._errors import (
    AlreadyWatchedError,
    ClosedError,
    FdLostError,
    ForkedContextError,
    InvalidArgumentError,
    PidfdUnavailableError,
    StateError,
    UnknownChildError,
)
from ._fds import above_stdio
from ._ledger import ChildCallback
from ._plan import ForkReplacement, Hooks, Plan, ReapedCallback
from ._policy import Reaper, SigchldOwner, choose_watcher
from ._sigchld import HANDLER
from ._signature import check_callback
from ._status import ChildEvent
from ._subreaper import SUBREAPER
from ._traps import TRAPS
from ._watchers import make_watcher
from ._watchers import pidfd as _pidfd

if TYPE_CHECKING:
    import resource

    from ._results import CompletedProcess
    from ._spawn import Argv

__all__ = ["Context", "ForkReplacement", "Hooks", "ReapedCallback", "ServedLike"]

log = logging.getLogger("childproc")

_HANDLER_RECHECK_S = 1.0  # how often a blocked wait() re-checks what it relies on
_EXIT_ONLY = os.WEXITED
_NO_TREE = _trees.NO_TREE
_fallback_logged = False


class ServedLike(Protocol):
    """What :meth:`Context.watch_served` needs of a fork server's child."""

    @property
    def pid(self) -> int: ...
    @property
    def exit_fd(self) -> int | None: ...
    def detach_fds(self) -> tuple[int | None, int | None]: ...


def _await_session(gate: int, pid: int) -> None:
    """Wait for a forked child's byte on ``gate`` (it called ``setsid()``), or for
    its death before that. The byte, not EOF: another thread's fork may hold the
    write end open for as long as its own child lives."""
    poller = select.poll()
    poller.register(gate, select.POLLIN)
    while not poller.poll(50):
        try:  # (a peek: the child stays unreaped for childproc)
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:
            return


def _validate_pid(pid: object, what: str) -> int:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise InvalidArgumentError(f"{what} must be a positive int pid, not {pid!r}")
    return pid


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
        watcher = make_watcher(choose_watcher(self.mode, self._pidfds))
        kids = self._kids = Children(Plan(self._hooks, self._pidfds), watcher)
        self._delivery = Delivery(
            kids.ledger,
            reaped_callback=None,
            reap_zombie=kids.reap_zombie,
            reap_leftovers=kids.reap_leftover_zombies,
            lost_why=kids.lost_why,
            mode_name=lambda: self.mode.name,
            poke=lambda: kids.wakeups.waker.poke(),  # noqa: PLW0108 - the waker is swapped at close
        )
        self._fds_checked_at = time.monotonic()
        self._waiters: dict[object, int] = {}  # a blocked wait()'s token -> its thread
        self._waiters_cv = threading.Condition(threading.Lock())
        self._teardown_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: MAINLOOP: the thread that reports exits (the last to call childproc_reaped or
        #: sigchld_occurred; at first the one that chose the mode), which must not wait.
        self._reporter = threading.get_ident()
        #: The pipes of this context's children, closed by close() (if still open).
        self._pipes: weakref.WeakSet[_stdio.ChildIO] = weakref.WeakSet()
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
        return self._kids.watcher.kind.name

    @property
    def uses_sigchld_handler(self) -> bool:
        """Whether this context needs childproc's SIGCHLD handler right now."""
        return self._kids.uses_handler()

    @property
    def children(self) -> frozenset[int]:
        """Pids this context made whose exit has not been delivered yet (a snapshot)."""
        _process.refuse_reentry()
        with _process.LOCK:
            self._kids.recover_locked()
            return self._kids.ledger.outstanding()

    def child(self, pid: int) -> Child:
        """The handle of running child ``pid`` (raises :class:`UnknownChildError`)."""
        _process.refuse_reentry()
        with _process.LOCK:
            self._kids.recover_locked()
            handle = self._kids.ledger.handle(pid)
        if handle is None:
            raise UnknownChildError(f"pid {pid!r} is not a running child of this context")
        return handle

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._kids.ledger.unreaped} running"
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
        if self._kids.dirty:
            with _process.LOCK:
                self._kids.recover_locked()
        if self._kids.doomed:
            _teardown.reap_doomed_if_dead(self._kids)

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
            raise PidfdUnavailableError(TRAPS["no-pidfds"].error(f"{hooks.chldowner.name} mode needs pidfds"))
        with _process.LOCK:
            self._check_usable()
            kids = self._kids
            if kids.ledger.unreaped or kids.ledger.has_events or kids.zombies:
                raise StateError(
                    "setmode() while this context has children outstanding or events undelivered; "
                    "call setmode() before the first child, or after every child's callback ran"
                )
            if plan.refuse_ignored_at_setmode:
                why = HANDLER.discards_statuses(fresh=True)
                if why is not None:
                    raise refuse_ignored(hooks.chldowner, why, "leaves SIGCHLD's disposition alone")
            if plan.rules.foreign_children_check.name == "SETMODE":
                kids.refuse_foreign_children_locked(hooks.chldowner)
            old = (self._hooks, self._user, kids.plan, kids.watcher)
            self._hooks, self._user, kids.plan = hooks, user, plan
            self._reporter = threading.get_ident()  # MAINLOOP: who reports exits, until one does
            kids.watcher = make_watcher(choose_watcher(hooks.chldowner, self._pidfds))
            cb = hooks.reaped_callback
            self._delivery.reaped_callback = None if cb is None else (lambda pid, st: cb(pid, st, self._user))
            try:
                kids.sync_handler_use_locked()
            except BaseException:
                self._hooks, self._user, kids.plan, kids.watcher = old
                raise
            SUBREAPER.release(self)  # (the next process-group tree holds it again, if the mode says so)
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
            Fork(self._hooks.fork_replacement, self._user),
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
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        text: bool = False,
        encoding: str | None = None,
        errors: str | None = None,
        events: int = os.WEXITED,
        oneshot: bool = False,
        reap_after_callback: bool = False,
        kill_on_close: bool = False,
        start_new_session: bool = False,
        process_group: int | None = None,
        kill_tree: bool | str = False,
    ) -> Child | None:
        """Fork; return the child's :class:`Child` handle in the parent, None in the child.

        ``on_event(child, event)`` runs once per reported :class:`ChildEvent`:
        always for the exit (exactly once), and for stops and continues if
        ``events`` includes ``os.WSTOPPED``/``os.WCONTINUED`` (with ``oneshot``,
        only the first of those). ``reap_after_callback`` runs the exit callback
        while the child is still a zombie (``/proc/<pid>`` readable) and reaps it
        right after, even if the callback raised (SELECTIVE_REAP and PIDFD only).
        ``kill_on_close`` kills and reaps the child when the context closes or the
        handle is released. ``stdin``, ``stdout``, ``stderr``, ``text``,
        ``encoding``, ``errors`` as for :meth:`spawn` (the forked child gets its
        fds 0-2 set before this returns None there). Errors as for
        :meth:`child_fork`.

        ``start_new_session`` (``setsid``) and ``process_group`` (``setpgid``; 0:
        a new group the child leads) as ``subprocess`` takes them.
        ``kill_tree=True`` gives the child a tree of its own (a cgroup where this
        process may make one, else its own process group; see
        :attr:`Child.tree_guarantee`): :meth:`Child.kill_tree`, ``kill_on_close``,
        ``run(timeout=...)`` and cancellation then kill the whole tree. The child
        is in its tree before this returns there. ``kill_tree="cgroup"`` insists
        on a cgroup (:class:`StateError` where there can be none);
        ``kill_tree="process-group"`` asks for the process group even where a
        cgroup could be made.
        """
        pipes, sources = _stdio.prepare(stdin, stdout, stderr)
        if sources is not None:
            _stdio.forking(pipes, sources)  # what the forked child keeps (see _stdio)
        tree, gate = _NO_TREE, None
        try:
            tree = _trees.plan(start_new_session, process_group, kill_tree)
            if tree.setsid:  # fork() returns once the child has its session (see below)
                gate = tuple(map(above_stdio, os.pipe2(os.O_CLOEXEC)))
            child = self._start(
                Fork(self._hooks.fork_replacement, self._user),
                on_event,
                events=events if events is _EXIT_ONLY else check_events(events),
                oneshot=oneshot,
                reap_after_callback=reap_after_callback,
                kill_on_close=kill_on_close,
                io=None if pipes is None else self._io_for(pipes, text, encoding, errors),
                tree=tree,
            )
        except BaseException:
            if pipes is not None:
                pipes.close_all()
            for fd in gate or ():
                os.close(fd)
            _trees.settle(tree.cgroup, kill=False)
            raise
        finally:
            if sources is not None:
                _stdio.forked()
        if child is None:  # in the forked child
            if gate is not None:
                os.write(gate[1], b"s")  # it has its session: the parent may go on
                os.close(gate[0])
                os.close(gate[1])
            if sources is not None:
                _stdio.redirect_in_child(sources, pipes)
            return None
        if pipes is not None:
            pipes.close_child_ends()
        if gate is not None:
            try:
                os.close(gate[1])
                _await_session(gate[0], child._pid)
            finally:
                os.close(gate[0])
        return child

    def _io_for(
        self, pipes: _stdio.Pipes, text: bool, encoding: str | None, errors: str | None
    ) -> _stdio.ChildIO:
        io = _stdio.ChildIO(pipes, bool(text or encoding or errors), encoding, errors)
        self._pipes.add(io)
        return io

    def _reports_here(self) -> bool:
        """MAINLOOP, and this thread is the one that reports exits: waiting here for
        an exit would wait forever."""
        return self._kids.plan.rules.app_reports and threading.get_ident() == self._reporter

    def _fd_to_dispatch(self) -> int | None:
        """The fd a thread waiting for a child's exit polls and then dispatches, or
        None where another thread dispatches (a dispatch thread; the application
        in MAINLOOP): the exit's delivery wakes the waiter then."""
        if self._kids.plan.rules.app_reports:
            return None
        thread = self._thread
        if thread is not None and thread.is_alive() and thread.ident != threading.get_ident():
            return None  # (on the dispatch thread itself, in a callback: nobody else would)
        return self.fileno()

    def spawn(
        self,
        argv: Argv,
        on_event: EventCallback | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        pass_fds: Sequence[int] = (),
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        text: bool = False,
        encoding: str | None = None,
        errors: str | None = None,
        events: int = os.WEXITED,
        oneshot: bool = False,
        reap_after_callback: bool = False,
        kill_on_close: bool = False,
        start_new_session: bool = False,
        process_group: int | None = None,
        kill_tree: bool | str = False,
    ) -> Child:
        """Run a program with ``posix_spawn``, without forking the interpreter.

        Costs the same from a 4 GiB parent as from a small one. ``env`` replaces
        the environment (default: this process's); ``cwd`` is the working
        directory; ``pass_fds`` stay open in the child at the same numbers.
        ``stdin``, ``stdout``, ``stderr``: :data:`PIPE` (a pipe, then
        :attr:`Child.stdin` etc.), :data:`DEVNULL`, :data:`STDOUT` (stderr only),
        an fd, a file object with ``fileno()``, or None (inherited), as with
        ``subprocess`` (whose constants are the same); ``text``, ``encoding``,
        ``errors`` make the pipes text files. SIGPIPE and SIGXFSZ start at their
        defaults, as with ``subprocess``; so does SIGCHLD, and no signal is
        blocked. ``argv[0]`` without a ``/`` is looked up on the ``PATH`` of
        ``env`` (or of this process). The child is registered before anyone can
        reap it, in every mode. Other arguments as for :meth:`fork`.

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
        pipes, src = _stdio.prepare(stdin, stdout, stderr)
        tree = _NO_TREE
        try:
            tree = _trees.plan(start_new_session, process_group, kill_tree)
            if src is not None:
                stdin, stdout, stderr = src
            creator = Spawn(
                argv,
                env=env,
                cwd=cwd,
                pass_fds=pass_fds,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                setsid=tree.setsid,
                setpgroup=tree.setpgroup,
                cgroup_procs=None if tree.cgroup is None else tree.cgroup.procs,
            )
            child = self._start(
                creator,
                on_event,
                events=events if events is _EXIT_ONLY else check_events(events),
                oneshot=oneshot,
                reap_after_callback=reap_after_callback,
                kill_on_close=kill_on_close,
                io=None if pipes is None else self._io_for(pipes, text, encoding, errors),
                args=argv,
                tree=tree,
            )
        except BaseException:
            if pipes is not None:
                pipes.close_all()
            _trees.settle(tree.cgroup, kill=False)
            raise
        finally:
            if pipes is not None:
                pipes.close_child_ends()
        assert child is not None
        return child

    def run(self, argv: Argv, **options: Any) -> CompletedProcess:
        """Run ``argv`` to completion, as ``subprocess.run``: ``run(argv, *, input=None,
        capture_output=False, stdin=None, stdout=None, stderr=None, timeout=None,
        check=False, text=False, encoding=None, errors=None, env=None, cwd=None,
        **spawn options)``. Returns a :class:`CompletedProcess` (a
        ``subprocess.CompletedProcess`` with ``event``, the final
        :class:`ChildEvent`). ``check=True`` raises :class:`CalledProcessError` for
        a non-zero exit; on ``timeout`` the child is killed with SIGKILL and reaped,
        then :class:`TimeoutExpired` is raised with the output so far (both are
        ``subprocess``'s classes too). Output is read by the rules of
        :meth:`Child.communicate`. In MAINLOOP, call it from a thread other than the
        one that reports exits (there it raises :class:`StateError`)."""
        from ._run import run  # noqa: PLC0415 - subprocess's classes load on first use

        return run(self, argv, **options)

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
        creator, fd = Adopt.from_args(pid, pidfd, own_pidfd)
        try:
            child = self._start(
                creator,
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
        self._kids.wakeups.waker.poke()  # it may already be a zombie: look now
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
        io: _stdio.ChildIO | None = None,
        args: Any = None,
        tree: _trees.TreePlan = _NO_TREE,
    ) -> Child | None:
        """The one way a child comes in: check, make it (through ``creator``) and
        register it, all under the process lock (see :mod:`childproc._children`)."""
        if on_event is not None:
            check_callback(on_event, 2, "on_event", "on_event(child, event)")
        self._enter()
        mode = self.mode
        rules = self._kids.plan.rules
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
        if tree.kill_tree and tree.cgroup is None and rules.app_reports:
            raise StateError(
                f"kill_tree here makes the child's tree its process group, which is signalled only "
                f"while childproc knows its leader is unreaped, and in {mode.name} the application "
                "reaps: use a cgroup tree (where this process may make cgroups) or another mode"
            )
        call = creator.prepare()
        with _process.LOCK:
            self._check_usable()
            self._kids.check_start_locked(creator, watches_stops, adopt_pidfd)
            if tree.kill_tree and tree.cgroup is None and rules.orphans_come_back:
                SUBREAPER.hold(self)  # (before the child exists: its orphans come back here)
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
            child._io, child._args = io, args  # (before the child exists: its exit may come at once)
            if tree is not _NO_TREE:
                child._leads_group = tree.leads_group
                child._tree = tree.tree_for(partial(self._signal_group, child))
                if tree.cgroup is not None:
                    self._kids.trees.append(child)
            if not self._kids.start_locked(creator, child, call, adopt_pidfd):
                if tree is not _NO_TREE:
                    tree.in_forked_child()
                return None  # in the forked child
            if tree is not _NO_TREE:  # (the lock held: nobody has reaped the child)
                tree.in_parent(child._pid, forked=isinstance(creator, Fork), by_pid=not rules.app_reports)
        return child

    # -- reaping ------------------------------------------------------------
    def _collect(self, ready: list[tuple[int, int]] | None = None) -> None:
        """Reap whatever the epoll says is ready (``ready``: what a poll just returned;
        None polls now), without blocking; apply the journal. Once a second on a quiet
        call, check that nobody closed our pidfds."""
        with _process.LOCK:
            if self._closed:  # closed by another thread since _enter() checked
                raise ClosedError("this childproc Context is closed; create a new one")
            self._kids.collect_locked(ready)
        if not ready and time.monotonic() - self._fds_checked_at >= _HANDLER_RECHECK_S:
            self._check_fds()

    def _report_lost_fds(self) -> None:
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

    # -- delivery -----------------------------------------------------------
    def _deliver(self) -> int:
        try:
            return self._delivery.deliver(lambda: self._closed)
        finally:
            self._kids.close_gone_fds()

    # -- handles --------------------------------------------------------------
    def _signal_child(self, child: Child, sig: int) -> None:
        self._send(self._kids.signal, child, sig)

    def _signal_group(self, child: Child, sig: int) -> None:
        self._send(self._kids.signal_group, child, sig)

    def _send(self, how: Callable[[Child, int], None], child: Child, sig: int) -> None:
        """``how(child, sig)`` under the process lock, ``sig`` checked first."""
        if not isinstance(sig, int) or isinstance(sig, bool) or not 0 <= sig < signal.NSIG:
            raise InvalidArgumentError(f"not a signal number: {sig!r}")
        _process.refuse_reentry()
        with _process.LOCK:
            how(child, sig)

    def _release_child(self, child: Child) -> None:
        _process.refuse_reentry()
        _teardown.release(self._kids, child, self._closed)

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
            return self._kids.wakeups.poll(timeout)
        except ValueError:  # closed by another thread
            self._check_usable()
            raise

    def _check_fds(self) -> None:
        """A quiet tick: check that nobody closed our pidfds (their deaths would go unseen)."""
        self._fds_checked_at = time.monotonic()
        with _process.LOCK:
            if not self._closed:
                self._kids.check_fds_locked()

    # -- the event loop interface ------------------------------------------
    def fileno(self) -> int:
        """An fd that is readable when :meth:`dispatch` has work (an epoll fd).

        Add it to your loop for reading (``selectors``, ``loop.add_reader``,
        ``trio.lowlevel.wait_readable``) and call :meth:`dispatch` when it fires.
        """
        self._check_usable()
        return self._kids.wakeups.fileno()

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
        ledger = self._kids.ledger
        if ledger.running or ledger.next_event() is not None or self._kids.zombies:
            return True
        # Modes that reap every child: the host's children are delivered too.
        return self._kids.plan.rules.reaper is Reaper.ANY_CHILD and bool(_process.foreign_children())

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
            if self._kids.uses_handler():  # report a replaced handler now, not after a sleep
                with _process.LOCK:
                    HANDLER.check()
            while True:
                # Sleep first (anything already ready makes it return at once), then
                # dispatch: one dispatch per wake-up, not an idle one before each sleep.
                ready = None
                with _process.LOCK:
                    idle = self._kids.ledger.next_event() is None
                    if idle and not self._outstanding():
                        return 0
                if idle:
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
            except Exception as exc:
                if exc is self._delivery.raised or not self._closed:  # (a callback's, even if
                    log.exception("a childproc callback raised on the dispatch thread")  # closing)
                if self._closed:
                    return

    # -- MAINLOOP -----------------------------------------------------------
    def _require_app_reports(self, what: str) -> None:
        if not self._kids.plan.rules.app_reports:
            raise StateError(
                f"{what} is only for SigchldOwner.MAINLOOP, where the application reaps; this "
                f"context is in {self.mode.name} mode and reaps its children itself"
            )

    def childproc_reaped(self, pid: int, status: int, rusage: resource.struct_rusage | None = None) -> bool:
        """MAINLOOP: the application reaped ``pid`` with wait status ``status``.

        Returns True if the pid was this context's (its callback has then run,
        from this call, and a ``child_fork`` callback gets ``status`` exactly as
        given), False otherwise. A stop or continue status (from
        ``waitpid(..., WUNTRACED | WCONTINUED)``) is reported the same way.
        ``rusage``: the child's resource usage if the application reaped it with
        ``os.wait4``/``os.wait3``; it becomes the final event's ``rusage``.
        Do not call it from a signal handler: report from your main loop.
        """
        _validate_pid(pid, "pid")
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
        self._enter()
        self._require_app_reports("childproc_reaped()")
        self._reporter = threading.get_ident()
        kids = self._kids
        with _process.LOCK:
            self._check_usable()
            if not kids.reported_locked(pid, status, rusage):
                return False
        self._deliver()
        if self._waiters:
            kids.wakeups.waker.poke()  # a thread in child.wait() may be waiting for this one
        return True

    def sigchld_occurred(self) -> int:
        """MAINLOOP: "a SIGCHLD happened": reap and deliver this context's dead children.

        For applications that reap only their own children (``waitpid(pid)``), so
        childproc's stay for childproc. Checks each of this context's children
        (``waitid(P_PID, pid, WNOHANG)``). Returns the number of events delivered.
        """
        self._enter()
        self._require_app_reports("sigchld_occurred()")
        self._reporter = threading.get_ident()
        kids = self._kids
        with _process.LOCK:
            self._check_usable()
            kids.scan_locked()
        delivered = self._deliver()
        if delivered and self._waiters:
            kids.wakeups.waker.poke()
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
            if self._kids.ledger.is_running(served.pid):
                raise AlreadyWatchedError(f"pid {served.pid} is already watched by this context")
            child = Child(
                self,
                served.pid,
                on_event,
                events=os.WEXITED,
                oneshot=False,
                defer_reap=False,
                kill_on_close=kill_on_close,
            )
            self._kids.watch_served_locked(child, *served.detach_fds())
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
        self._finish_teardown()

    def _finish_teardown(self) -> None:
        """Carry out (or finish) the teardown :meth:`close` began."""
        orphans: list[int] = []
        kids = self._kids
        with self._teardown_lock:
            if self._torn_down:
                return
            with _process.LOCK:
                kids.recover_locked()
                _teardown.teardown_locked(kids, orphans)
            kids.wakeups.waker.poke()
            if kids.doomed:
                _teardown.reap_killed(kids, list(kids.doomed), closed=True)
            me = threading.get_ident()
            thread = self._thread
            if thread is not None and thread.ident != me:
                thread.join()
            with self._waiters_cv:
                self._waiters_cv.wait_for(
                    lambda: all(t == me for t in list(self._waiters.values())), timeout=5.0
                )
            with _process.LOCK:
                kids.close_gone_fds()
                kids.wakeups.close()
                SUBREAPER.release(self)
                self._torn_down = True
            kids.settle_trees()  # what is left of exited children's trees (killed: kill_on_close)
            _process.teardown_done(self)
        for io in list(self._pipes):
            io.close()
        if orphans:
            app_reaps = kids.plan.rules.reaper is Reaper.APPLICATION
            warnings.warn(_teardown.orphan_warning(orphans, app_reaps), ResourceWarning, stacklevel=3)
        _process.run_chores()

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
            self._finish_teardown()

    def _abandon_after_fork(self) -> None:
        """In a forked child: disable this inherited context and close its fds."""
        self._forked = True
        self._closed = True
        self._torn_down = True
        self._kids.wakeups.abandon_after_fork()
        for child in self._kids.ledger.running_handles():
            child._pidfd = None
