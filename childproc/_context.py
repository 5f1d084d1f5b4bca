"""The Context: make or adopt children, learn exactly once when each dies.

The façade over parts with one job each:

* :mod:`childproc._starter`: the one way a child comes in (checks, creator,
  pipes, session and tree), and :mod:`childproc._creators`: how a child comes to
  be (fork, spawn, adopt);
* :mod:`childproc._dispatching`: the dispatch cycle (reap what is ready,
  deliver it) and every way of waiting for it (``wait()``, a child's ``wait()``,
  the dispatch thread, MAINLOOP's reports);
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

import _thread
import logging
import operator
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from . import _process, _teardown, _trees
from ._child import Child, EventCallback, check_signal
from ._childio import FileOptions
from ._children import Children, refuse_ignored
from ._creators import Fork
from ._delivery import Delivery
from ._dispatching import Dispatcher, ReportWatch, check_report, check_timeout
from ._errors import (
    ClosedError,
    ForkedContextError,
    InvalidArgumentError,
    PidfdUnavailableError,
    StateError,
    UnknownChildError,
)
from ._ledger import ChildCallback
from ._plan import ForkReplacement, Hooks, Plan, ReapedCallback
from ._policy import Reaper, SigchldOwner, choose_watcher
from ._sigchld import HANDLER
from ._signature import check_callback
from ._starter import EXIT_ONLY, ServedLike, Starter
from ._status import ChildEvent
from ._subreaper import SUBREAPER
from ._traps import TRAPS
from ._warn import warn
from ._watchers import make_watcher
from ._watchers import pidfd as _pidfd

if TYPE_CHECKING:
    import resource

    from typing_extensions import Never

    from ._results import CompletedProcess
    from ._spawn import Argv

__all__ = ["Context", "ForkReplacement", "Hooks", "ReapedCallback", "ServedLike"]

log = logging.getLogger("childproc")

_fallback_logged = False

#: A closed context's ``_on_death``: C code that takes no argument and does nothing
#: (``NoneType()``). See :attr:`Context.__del__`.
_NOTHING: Callable[[], object] = type(None)


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
        self._teardown_lock = threading.Lock()
        self._dispatcher = Dispatcher(
            kids,
            self._delivery,
            enter=self._enter,
            check_usable=self._check_usable,
            closed=lambda: self._closed,
        )
        self._starter = Starter(
            self,
            kids,
            enter=self._enter,
            check_usable=self._check_usable,
            fork_creator=lambda: Fork(self._hooks.fork_replacement, self._user),
            signal_group=self._signal_group,
        )
        _process.register_context(self)
        if not _process.exiting():
            self._on_death = partial(_thread.start_new_thread, _process.tear_down_forgotten, (self,))
        if mode is not None or hooks is not None:
            try:
                self.setmode(hooks if hooks is not None else Hooks(chldowner=mode), user)  # type: ignore[arg-type]
            except BaseException:  # refused (a foreign handler, an ignored SIGCHLD), interrupted
                self.close()  # (nobody else holds this context to close it)
                raise

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
            if not plan.rules.orphans_come_back:  # (first: before the new mode is in force)
                SUBREAPER.release(self)
            dispatcher, delivery = self._dispatcher, self._delivery
            old = (
                self._hooks,
                self._user,
                kids.plan,
                kids.watcher,
                delivery.reaped_callback,
            )
            self._hooks, self._user, kids.plan = hooks, user, plan
            reporting = dispatcher.report_expected()  # (MAINLOOP)
            kids.watcher = make_watcher(choose_watcher(hooks.chldowner, self._pidfds))
            cb = hooks.reaped_callback
            delivery.reaped_callback = None if cb is None else (lambda pid, st: cb(pid, st, self._user))
            try:
                kids.sync_handler_use_locked()
            except BaseException:
                (self._hooks, self._user, kids.plan, kids.watcher, delivery.reaped_callback) = old
                dispatcher.restore_reporting(reporting)
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
        child = self._starter.start(
            Fork(self._hooks.fork_replacement, self._user),
            None,
            events=EXIT_ONLY,
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
        universal_newlines: bool | None = None,
        bufsize: int = -1,
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
        cgroup could be made. An exception that cuts the call short in the parent
        once the child exists (a ``KeyboardInterrupt``) SIGKILLs the child, and its
        tree, before it goes on.
        """
        return self._starter.fork(
            on_event,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            files=FileOptions.of(text, encoding, errors, universal_newlines, bufsize),
            events=events,
            oneshot=oneshot,
            reap_after_callback=reap_after_callback,
            kill_on_close=kill_on_close,
            start_new_session=start_new_session,
            process_group=process_group,
            kill_tree=kill_tree,
        )

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
        universal_newlines: bool | None = None,
        bufsize: int = -1,
        events: int = os.WEXITED,
        oneshot: bool = False,
        reap_after_callback: bool = False,
        kill_on_close: bool = False,
        start_new_session: bool = False,
        process_group: int | None = None,
        kill_tree: bool | str = False,
        **not_taken: Never,
    ) -> Child:
        """Run a program with ``posix_spawn``, without forking the interpreter.

        Costs the same from a 4 GiB parent as from a small one. ``env`` replaces
        the environment (default: this process's); ``cwd`` is the working
        directory; ``pass_fds`` stay open in the child at the same numbers.
        ``stdin``, ``stdout``, ``stderr``: :data:`PIPE` (a pipe, then
        :attr:`Child.stdin` etc.), :data:`DEVNULL`, :data:`STDOUT` (stderr only),
        an fd, a file object with ``fileno()``, or None (inherited), as with
        ``subprocess`` (whose constants are the same); ``text`` (or
        ``universal_newlines``), ``encoding``, ``errors`` make the pipes text files,
        and ``bufsize`` buffers them as ``Popen``'s (0: unbuffered; 1: a text stdin
        flushed at each line end). SIGPIPE and SIGXFSZ start at their
        defaults, as with ``subprocess``; so does SIGCHLD, and no signal is
        blocked. ``argv[0]`` without a ``/`` is looked up on the ``PATH`` of
        ``env`` (or of this process). The child is registered before anyone can
        reap it, in every mode. Other arguments as for :meth:`fork`.

        Raises :class:`SpawnError` (with ``errno`` and ``filename``) if the program
        or ``cwd`` cannot be used; it is also a :class:`FileNotFoundError`,
        :class:`PermissionError` or :class:`NotADirectoryError` as ``subprocess``
        raises. Wrong argument types raise :class:`InvalidArgumentError`, also a
        :class:`TypeError`; so do ``Popen``'s arguments childproc does not take
        (``not_taken``: ``shell``, ``close_fds``, ``preexec_fn`` ...), saying what to
        do instead. An exception that cuts the call short once the child
        exists (a ``KeyboardInterrupt``) SIGKILLs it, and its tree, before it goes
        on: the caller has no handle to stop it with.
        """
        if not_taken:
            from ._run import refuse_options  # noqa: PLC0415 - an error path only

            refuse_options(not_taken, "spawn")
        return self._starter.spawn(
            argv,
            on_event,
            env=env,
            cwd=cwd,
            pass_fds=pass_fds,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            files=FileOptions.of(text, encoding, errors, universal_newlines, bufsize),
            events=events,
            oneshot=oneshot,
            reap_after_callback=reap_after_callback,
            kill_on_close=kill_on_close,
            start_new_session=start_new_session,
            process_group=process_group,
            kill_tree=kill_tree,
        )

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
        one that reports exits (there it raises :class:`StateError`).

        The child is spawned with ``kill_on_close=True`` unless told otherwise, so
        with a cgroup tree (``kill_tree=True`` where cgroups can be made) what the
        tree left running after the child exited (``sleep 100 &``) is killed by
        :meth:`close` (a spawned child's is left running; a process-group tree's
        cannot be signalled once its leader was reaped): pass
        ``kill_on_close=False`` to leave it running. Arguments ``run``
        does not take (``shell=True``, a misspelling) raise an
        :class:`InvalidArgumentError` that is also a ``TypeError``, saying what to do."""
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
        return self._starter.adopt(
            pid,
            on_event,
            pidfd=pidfd,
            own_pidfd=own_pidfd,
            events=events,
            oneshot=oneshot,
            reap_after_callback=reap_after_callback,
            kill_on_close=kill_on_close,
        )

    # -- handles --------------------------------------------------------------
    def _signal_child(self, child: Child, sig: int) -> None:
        self._send(self._kids.signal, child, sig)

    def _signal_group(self, child: Child, sig: int) -> None:
        self._send(self._kids.signal_group, child, sig)

    def _send(self, how: Callable[[Child, int], None], child: Child, sig: int) -> None:
        """``how(child, sig)`` under the process lock, ``sig`` checked first."""
        check_signal(sig)
        _process.refuse_reentry()
        with _process.LOCK:
            how(child, sig)

    def _release_child(self, child: Child) -> None:
        _process.refuse_reentry()
        _teardown.release(self._kids, child, self._closed)

    def _wait_child(self, child: Child, timeout: float | None) -> ChildEvent | None:
        return self._dispatcher.wait_child(child, timeout)

    def _fd_to_dispatch(self) -> int | None:
        return self._dispatcher.fd_to_dispatch()

    def _reports_here(self) -> bool:
        return self._dispatcher.reports_here()

    def _report_watch(self, child: Child, *, endless: bool) -> ReportWatch | None:
        return self._dispatcher.report_watch(child, endless=endless)

    def _unreported_locked(self) -> list[int]:
        """MAINLOOP, for the doctor: the pids whose exit the application has not
        reported yet, fork-server children aside (theirs come on their exit fds).
        The process lock held."""
        return [pid for pid, child in self._kids.ledger.running.items() if child._exit_fd is None]

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
        return self._dispatcher.pump()

    def wait(self, timeout: float | None = None) -> int:
        """Block until at least one event was delivered by this call, or ``timeout``
        seconds passed (None: no limit). Returns the number delivered (0 on timeout,
        and at once when nothing is outstanding: no child, no undelivered event).

        Raises :class:`ClosedError` if the context is closed meanwhile. In
        MAINLOOP, on the thread that reports exits, raises :class:`StateError`
        instead of waiting for reports only that thread can make (``timeout=0``,
        a look, is fine; so is a wait that a fork server's child may end).
        """
        return self._dispatcher.wait(check_timeout(timeout))

    def start_dispatch_thread(self) -> threading.Thread:
        """Run :meth:`wait` forever on a daemon thread, for hosts with no loop.

        Callbacks then run on that thread; an exception from one is logged on
        logger ``childproc`` and the thread goes on. The thread ends at
        :meth:`close`. Note that a running thread makes a later ``os.fork()`` in
        this process unsafe in general (Python 3.12+ warns): prefer
        :meth:`fileno` in a loop you already have, or :meth:`spawn`.
        """
        self._enter()
        return self._dispatcher.start_thread()

    # -- MAINLOOP -----------------------------------------------------------
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
        check_report(pid, status, rusage)
        self._enter()
        return self._dispatcher.reported(pid, status, rusage)

    def sigchld_occurred(self) -> int:
        """MAINLOOP: "a SIGCHLD happened": reap and deliver this context's dead children.

        For applications that reap only their own children (``waitpid(pid)``), so
        childproc's stay for childproc. Checks each of this context's children
        (``waitid(P_PID, pid, WNOHANG)``). Returns the number of events delivered.
        """
        self._enter()
        return self._dispatcher.sigchld_occurred()

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
        return self._starter.watch_served(served, on_event, kill_on_close)

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

        Idempotent; safe from a callback, where it waits for no other thread (a
        close already under way on another thread finishes there; the dispatch
        thread ends on its own). In a forked child it only marks the
        inherited context closed. Interrupted (``KeyboardInterrupt``), the rest
        of the teardown is done by the next childproc call, or by ``close()`` again.
        """
        if self._torn_down:
            return
        if self._forked or self._pid != os.getpid():
            self._closed = True
            self._on_death = _NOTHING
            return
        _process.refuse_reentry()
        _process.teardown_started(self)  # (first: interrupted after it, the chores finish)
        self._closed = True
        # (from a callback: if another thread is closing, it may be waiting for this one)
        self._finish_teardown(wait=not _process.delivering_here())

    def _finish_teardown(self, *, wait: bool = True) -> None:
        """Carry out (or finish) the teardown :meth:`close` began.

        ``wait=False`` (the chores): if another thread is at it, leave it that thread
        and have the chores look again later (should it be interrupted). Waiting
        could deadlock: that thread may be waiting for this one, as a close joins
        its dispatch thread, which runs chores.
        """
        orphans: list[int] = []
        kids = self._kids
        lock = self._teardown_lock
        taken: list[bool] = []
        try:
            taken.extend(map(lock.acquire, (wait,)))  # (lands from C: no interruption between)
            if not taken[0]:
                _process.want_chores()
                return
            if self._torn_down:
                return
            self._closed = True  # (close() may have been interrupted before it said so)
            with _process.LOCK:
                kids.recover_locked()
                _teardown.teardown_locked(kids, orphans)
            kids.wakeups.waker.poke()
            if kids.doomed:
                _teardown.reap_killed(kids, list(kids.doomed), closed=True)
            _trees.reap_all_returned(_trees.SETTLE_S)  # (a subreaper: what came back of trees)
            self._dispatcher.stop()
            with _process.LOCK:
                kids.close_gone_fds()
                kids.disown_all_locked()
                kids.wakeups.close()
                SUBREAPER.release(self)
                self._torn_down = True
                self._on_death = _NOTHING
            kids.settle_trees()  # what is left of exited children's trees (killed: kill_on_close)
            _process.teardown_done(self)
        finally:
            if taken and taken[0]:
                lock.release()
        for io in list(self._starter.pipes):
            io.close()
        if orphans:
            app_reaps = kids.plan.rules.reaper is Reaper.APPLICATION
            warn(_teardown.orphan_warning(orphans, app_reaps), ResourceWarning)
        _process.run_chores()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # A context freed while open is closed on a thread of its own, and its finalizer
    # runs no Python code. Python code that the garbage collector runs cannot pass an
    # exception on: CPython prints it ("Exception ignored") and goes on. A signal that
    # came during a collection has its handler run in the first Python code run after
    # it, so a Ctrl-C pressed while a collection freed a context would be lost in a
    # Python ``__del__``. So ``__del__`` is a property whose getter (``attrgetter``, C)
    # gives the context's ``_on_death``, which the finalizer then calls: while the
    # context is open, a ``partial`` of ``_thread.start_new_thread`` (C), which starts
    # :func:`_process.tear_down_forgotten` off the main thread, where no
    # ``KeyboardInterrupt`` is raised; once it is closed (or inherited through
    # ``fork()``, or the interpreter is exiting), ``NoneType``, which does nothing.
    __del__ = property(operator.attrgetter("_on_death"))
    _on_death: Callable[[], object] = _NOTHING  # (until __init__ arms it; an __init__ that fails)

    def _tear_down_forgotten(self) -> None:
        """Freed while open (on a thread of its own: see ``__del__``): warn, close
        (also when the warning is an error: the finalizer runs only once)."""
        if self._closed or self._forked or self._pid != os.getpid():
            return
        try:
            warn(f"unclosed {self!r}: call close() or use 'with'", ResourceWarning)
        finally:
            self.close()

    def _wake(self) -> None:
        """Make :meth:`fileno` readable: whoever watches it dispatches (an adapter's loop)."""
        self._kids.wakeups.waker.poke()

    def _delivering_here(self) -> bool:
        return self._delivery.delivering_here()

    def _leave_at_exit(self) -> None:
        """The interpreter is exiting: a thread started now would never run. The
        children of a context left open go to init."""
        self._on_death = _NOTHING

    def _abandon_after_fork(self) -> None:
        """In a forked child: disable this inherited context and close its fds."""
        self._forked = True
        self._closed = True
        self._torn_down = True
        self._on_death = _NOTHING
        self._kids.wakeups.abandon_after_fork()
        for child in self._kids.ledger.running_handles():
            child._pidfd = None
