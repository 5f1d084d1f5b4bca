"""How a context takes a child in: the checks, the creator, the child's pipes and tree.

Rules of this file
------------------
* :meth:`Starter.start` is the one way a child comes in (``child_fork``,
  ``fork``, ``spawn``, ``adopt``): the arguments are checked, the creator
  prepared, and then, under the process lock, the child is made (or named) and
  registered (``Children.start_locked``) and its tree claimed, so that no reaper
  anywhere in the process can take the pid unseen. ``watch_served`` registers a
  fork server's child under the lock too, but with no creator and none of the
  mode's checks: the server made and reaps it.
* What ``fork`` and ``spawn`` add around it, each undone on every path if the
  start fails: the child's pipes (:mod:`childproc._stdio`), its session, group
  and tree (:mod:`childproc._trees`), and, for a forked child that calls
  ``setsid()``, a gate that holds ``fork()`` in the parent until the child has
  its session (so that ``signal_group()`` right after reaches it).
* A process-group tree in a mode whose orphans come back makes the process a
  subreaper before the child exists (:mod:`childproc._subreaper`).
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from . import _childio, _process, _stdio, _trees
from ._child import Child, ChildOwner, EventCallback, check_events
from ._children import Children
from ._creators import Adopt, Creator, Fork, Spawn
from ._errors import AlreadyWatchedError, InvalidArgumentError, StateError
from ._fds import above_stdio
from ._run import kill_and_own
from ._signature import check_callback
from ._subreaper import SUBREAPER
from ._weakbag import WeakBag

if TYPE_CHECKING:
    from ._ledger import ChildCallback
    from ._spawn import Argv

__all__ = ["EXIT_ONLY", "ServedLike", "Starter"]

#: ``events=`` for exits only (the default): checked by identity on the fast path.
EXIT_ONLY = os.WEXITED
_NO_TREE = _trees.NO_TREE


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


def _undo_start(
    made: list[Child], pipes: _stdio.Pipes | None, tree: _trees.TreePlan, gate: tuple[int, ...] | None = None
) -> None:
    """A ``spawn`` or ``fork`` that raised: kill the child it made, if it made one
    (see :func:`~childproc._run.kill_and_own`), then close its pipes (and a
    fork's session gate) and settle its cgroup, whatever the kill did."""
    try:
        if made:
            kill_and_own(made[0])
    finally:
        if pipes is not None:
            pipes.close_all()
        for fd in gate or ():
            os.close(fd)
        _trees.settle(tree.cgroup, kill=False)


class Starter:
    """Takes children into one context (see the rules above)."""

    def __init__(
        self,
        owner: ChildOwner,
        kids: Children,
        *,
        enter: Callable[[], None],
        check_usable: Callable[[], None],
        fork_creator: Callable[[], Fork],
        signal_group: Callable[[Child, int], None],
    ) -> None:
        self._owner = owner
        self._kids = kids
        self._enter = enter
        self._check_usable = check_usable
        self._fork_creator = fork_creator
        self._signal_group = signal_group
        #: The pipes of this context's children, closed by close() (if still open).
        self.pipes: WeakBag[_childio.ChildIO] = WeakBag()

    def start(
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
        io: _childio.ChildIO | None = None,
        args: Any = None,
        tree: _trees.TreePlan = _NO_TREE,
        made: list[Child] | None = None,
    ) -> Child | None:
        """Check, make the child (through ``creator``) and register it, all under the
        process lock (see :mod:`childproc._children`). None in a forked child.
        ``made`` receives the handle before the child exists (see :func:`_undo_start`)."""
        if on_event is not None:
            check_callback(on_event, 2, "on_event", "on_event(child, event)")
        self._enter()
        plan = self._kids.plan
        rules, mode = plan.rules, plan.mode
        watches_stops = events != EXIT_ONLY
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
            if tree.kill_tree and tree.cgroup is None and self._kids.plan.rules.orphans_come_back:
                SUBREAPER.hold(self._owner)  # (before the child exists: its orphans come back here)
            child = Child(
                self._owner,
                0,
                on_event,
                events=events,
                oneshot=oneshot,
                defer_reap=reap_after_callback,
                kill_on_close=kill_on_close,
                on_exit_status=on_exit_status,
            )
            if made is not None:
                made.append(child)
            child._io, child._args = io, args  # (before the child exists: its exit may come at once)
            if tree is not _NO_TREE:
                child._leads_group = tree.leads_group
                child._tree = tree.tree_for(partial(self._signal_group, child), lambda: child._pid)
                if tree.cgroup is not None:
                    self._kids.trees.append(child)
            if not self._kids.start_locked(creator, child, call, adopt_pidfd):
                if tree is not _NO_TREE:
                    tree.in_forked_child()
                return None  # in the forked child
            if tree is not _NO_TREE:  # (the lock held: nobody has reaped the child)
                tree.in_parent(child._pid, forked=isinstance(creator, Fork), by_pid=not rules.app_reports)
                if tree.kill_tree and tree.cgroup is None and SUBREAPER.brings_back:
                    SUBREAPER.track(child._pid)
        return child

    def _io_for(self, pipes: _stdio.Pipes, files: _childio.FileOptions) -> _childio.ChildIO:
        io = _childio.ChildIO(pipes, files)
        self.pipes.add(io)
        return io

    def fork(
        self,
        on_event: EventCallback | None,
        *,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        files: _childio.FileOptions,
        events: int,
        oneshot: bool,
        reap_after_callback: bool,
        kill_on_close: bool,
        start_new_session: bool,
        process_group: int | None,
        kill_tree: bool | str,
    ) -> Child | None:
        """``Context.fork``."""
        pipes, sources = _stdio.prepare(stdin, stdout, stderr)
        if sources is not None:
            _stdio.forking(pipes, sources)  # what the forked child keeps (see _stdio)
        tree, gate = _NO_TREE, None
        made: list[Child] = []
        try:
            tree = _trees.plan(start_new_session, process_group, kill_tree)
            if tree.setsid:  # fork() returns once the child has its session (see below)
                gate = tuple(map(above_stdio, os.pipe2(os.O_CLOEXEC)))
            child = self.start(
                self._fork_creator(),
                on_event,
                events=events if events is EXIT_ONLY else check_events(events),
                oneshot=oneshot,
                reap_after_callback=reap_after_callback,
                kill_on_close=kill_on_close,
                io=None if pipes is None else self._io_for(pipes, files),
                tree=tree,
                made=made,
            )
        except BaseException:
            _undo_start(made, pipes, tree, gate)
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
        try:
            if pipes is not None:
                pipes.close_child_ends()
            if gate is not None:
                try:
                    os.close(gate[1])
                    _await_session(gate[0], child._pid)
                finally:
                    os.close(gate[0])
        except BaseException:
            kill_and_own(child)
            raise
        return child

    def spawn(
        self,
        argv: Argv,
        on_event: EventCallback | None,
        *,
        env: Mapping[str, str] | None,
        cwd: str | os.PathLike[str] | None,
        pass_fds: Sequence[int],
        stdin: Any,
        stdout: Any,
        stderr: Any,
        files: _childio.FileOptions,
        events: int,
        oneshot: bool,
        reap_after_callback: bool,
        kill_on_close: bool,
        start_new_session: bool,
        process_group: int | None,
        kill_tree: bool | str,
    ) -> Child:
        """``Context.spawn``."""
        if type(pass_fds) is not tuple and (
            not isinstance(pass_fds, Sequence) or isinstance(pass_fds, (str, bytes))
        ):
            raise InvalidArgumentError(f"pass_fds must be a sequence of fds, not {pass_fds!r}")
        pipes, src = _stdio.prepare(stdin, stdout, stderr)
        tree = _NO_TREE
        made: list[Child] = []
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
            child = self.start(
                creator,
                on_event,
                events=events if events is EXIT_ONLY else check_events(events),
                oneshot=oneshot,
                reap_after_callback=reap_after_callback,
                kill_on_close=kill_on_close,
                io=None if pipes is None else self._io_for(pipes, files),
                args=argv,
                tree=tree,
                made=made,
            )
            if pipes is not None:
                pipes.close_child_ends()
        except BaseException:
            _undo_start(made, pipes, tree)
            raise
        assert child is not None
        return child

    def adopt(
        self,
        pid: int | None,
        on_event: EventCallback | None,
        *,
        pidfd: int | None,
        own_pidfd: bool,
        events: int,
        oneshot: bool,
        reap_after_callback: bool,
        kill_on_close: bool,
    ) -> Child:
        """``Context.adopt``."""
        creator, fd = Adopt.from_args(pid, pidfd, own_pidfd)
        try:
            child = self.start(
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

    def watch_served(self, served: ServedLike, on_event: EventCallback | None, kill_on_close: bool) -> Child:
        """``Context.watch_served``."""
        if served.exit_fd is None:
            raise InvalidArgumentError(
                "watch_served() needs a child forked with exit_fd=True whose exit fd no context "
                "has taken yet (watch_served() takes it: once per child)"
            )
        if on_event is not None:
            check_callback(on_event, 2, "on_event", "on_event(child, event)")
        self._enter()
        with _process.LOCK:
            self._check_usable()
            if self._kids.ledger.is_running(served.pid):
                raise AlreadyWatchedError(f"pid {served.pid} is already watched by this context")
            child = Child(
                self._owner,
                served.pid,
                on_event,
                events=os.WEXITED,
                oneshot=False,
                defer_reap=False,
                kill_on_close=kill_on_close,
            )
            self._kids.watch_served_locked(child, *served.detach_fds())
        return child
