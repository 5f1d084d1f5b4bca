"""The child handle: one per child a context watches, forked, spawned or adopted.

A :class:`Child` is both the context's record of a child (what the watchers
and the ledger read) and the application's handle on it. Its ``phase`` (a
:class:`~childproc._lifecycle.Phase`) changes only under the process lock,
through the ledger and the lifecycle table, at the moment childproc
*observes* a state change (reaping it or peeking at it), so ``state`` and
``send_signal`` never lag behind the kernel's view by a delivery.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from . import _process
from ._errors import ChildExitedError, InvalidArgumentError, StateError
from ._lifecycle import FINISHED, Phase
from ._status import ChildEvent
from ._trees import SETTLE_S

if TYPE_CHECKING:
    from ._childio import ChildIO
    from ._trees import Tree


class ReportCheck(Protocol):
    """MAINLOOP: watches, during a wait, that a child's exit is reported once it exited."""

    def check(self) -> None:
        """Called when the wait found nothing: raise or warn if the report is late."""


class ChildOwner(Protocol):
    """What a handle asks of the context that watches it (a :class:`~childproc.Context`)."""

    @property
    def closed(self) -> bool: ...
    def dispatch(self) -> int: ...
    def _signal_child(self, child: Child, sig: int) -> None: ...
    def _signal_group(self, child: Child, sig: int) -> None: ...
    def _wait_child(self, child: Child, timeout: float | None) -> ChildEvent | None: ...
    def _release_child(self, child: Child) -> None: ...
    def _fd_to_dispatch(self) -> int | None: ...
    def _reports_here(self) -> bool: ...
    def _report_watch(self, child: Child, *, endless: bool) -> ReportCheck | None: ...


__all__ = ["EVENT_MASK", "Child", "ChildState", "EventCallback", "check_events"]

#: ``on_event(child, event)``: what ``Context.fork``/``spawn``/``adopt`` call.
EventCallback = Callable[["Child", ChildEvent], object]

#: The state-change bits a child may ask for (as ``waitid`` spells them).
EVENT_MASK = os.WEXITED | os.WSTOPPED | os.WCONTINUED


def check_events(events: object) -> int:
    """Validate an ``events=`` argument: ``os.WEXITED`` plus optionally the others."""
    if (
        not isinstance(events, int)
        or isinstance(events, bool)
        or events & ~EVENT_MASK
        or not (events & os.WEXITED)
    ):
        raise InvalidArgumentError(
            "events must be os.WEXITED, optionally | os.WSTOPPED | os.WCONTINUED "
            f"(the exit is always reported), not {events!r}"
        )
    return events


class ChildState(enum.Enum):
    """Where a child is, as far as childproc has observed."""

    RUNNING = "running"
    STOPPED = "stopped"
    EXITED = "exited"


#: ``events`` of a child that asked for its exit only (no stop/continue events).
_EXIT_ONLY = os.WEXITED
_PUBLIC_STATE = {
    Phase.RUNNING: ChildState.RUNNING,
    Phase.STOPPED: ChildState.STOPPED,
    Phase.ORPHANED: ChildState.RUNNING,  # last seen running
}


def check_signal(sig: object) -> None:
    """Refuse what is not a signal number (0 .. NSIG - 1)."""
    if not isinstance(sig, int) or isinstance(sig, bool) or not 0 <= sig < signal.NSIG:
        raise InvalidArgumentError(f"not a signal number: {sig!r}")


#: How long leaving a handle's ``with`` block by a Ctrl-C waits for the child (as ``Popen``).
_INTERRUPTED_WAIT_S = 0.25


class Child:
    """A child process watched by a :class:`~childproc.Context`.

    Get one from :meth:`Context.fork`, :meth:`Context.spawn`,
    :meth:`Context.adopt`, or :meth:`Context.child` (for a pid from
    :meth:`Context.child_fork`). Thread-safe.
    """

    __slots__ = (
        "__weakref__",
        "_args",
        "_ctx",
        "_defer_reap",
        "_events",
        "_exit_fd",
        "_exit_wakers",
        "_final",
        "_io",
        "_leads_group",
        "_on_event",
        "_on_exit_status",
        "_pid",
        "_pidfd",
        "_polled",
        "_runs_on",
        "_rusage",
        "_status",
        "_tree",
        "_uid",
        "_watches_stops",
        "kill_on_close",
        "oneshot",
        "phase",
    )

    def __init__(
        self,
        ctx: ChildOwner,
        pid: int,
        on_event: EventCallback | None,
        *,
        events: int,
        oneshot: bool,
        defer_reap: bool,
        kill_on_close: bool,
        on_exit_status: Callable[[int, int], object] | None = None,
    ) -> None:
        self._ctx = ctx
        self._pid = pid
        self._pidfd: int | None = None
        self._exit_fd: int | None = None  # a fork server's child: where its exit arrives
        #: Its status is lost while it may still run: its fork server went away first.
        self._runs_on = False
        self._polled = False  # the pidfd is in the context's epoll
        self._on_event = on_event
        #: ``child_fork``'s ``callback(pid, wait_status)``, called in place of ``_on_event``.
        self._on_exit_status = on_exit_status
        self._events = events
        #: Where the child is in its life (see childproc._lifecycle); changed by the ledger.
        self.phase = Phase.RUNNING
        # The exit: wait status and uid as childproc saw them (the ChildEvent is made
        # from them when first asked for: a child_fork callback never needs one).
        self._status: int | None = None
        self._uid: int | None = None
        self._rusage: Any = None  # resource.struct_rusage, from wait4/wait3 where childproc reaped it
        self._final: ChildEvent | None = None
        self._watches_stops = events != _EXIT_ONLY
        self._defer_reap = defer_reap
        #: After the first stop/continue event, stop reporting them.
        self.oneshot = oneshot
        #: SIGKILL and reap this child when the context closes or the handle is released.
        self.kill_on_close = kill_on_close
        #: Its pipes, text settings and communicate() state (None: started without pipes).
        self._io: ChildIO | None = None
        self._args: object = None  # what spawn() was given
        #: What the delivery of an event of this child pokes (a communicate() waiting).
        self._exit_wakers: tuple[Callable[[], None], ...] = ()
        #: Its tree (``kill_tree=True``; see childproc._trees), and whether it leads
        #: its own process group (``process_group=0``, ``start_new_session``).
        self._tree: Tree | None = None
        self._leads_group = False

    # -- what the application reads -----------------------------------------
    @property
    def pid(self) -> int:
        return self._pid

    @property
    def pidfd(self) -> int | None:
        """The child's pidfd while childproc holds one (None without pidfds, or once gone)."""
        return self._pidfd

    @property
    def context(self) -> ChildOwner:
        """The :class:`~childproc.Context` watching this child."""
        return self._ctx

    @property
    def events(self) -> int:
        """The state changes reported: ``os.WEXITED`` | maybe ``WSTOPPED``/``WCONTINUED``."""
        return self._events

    @property
    def watches_stops(self) -> bool:
        """Stop/continue events are being watched for (read by the watchers)."""
        return self._watches_stops

    @property
    def defer_reap(self) -> bool:
        """The exit callback runs while the child is a zombie; it is reaped after."""
        return self._defer_reap

    @property
    def state(self) -> ChildState:
        phase = self.phase
        if phase is Phase.RELEASED and self._status is None:
            return ChildState.RUNNING  # released before its exit was seen
        return _PUBLIC_STATE.get(phase, ChildState.EXITED)

    @property
    def done(self) -> bool:
        """Nothing more will be reported for this child (exit delivered, or released)."""
        return self.phase in FINISHED

    @property
    def final(self) -> ChildEvent | None:
        """How the child died, once childproc has seen it (None before, or if it was stolen)."""
        if self._final is None and self._status is not None:
            final = ChildEvent.from_wait_status(self._pid, self._status, self._uid, self._rusage)
            tree = self._tree
            if tree is not None and tree.guarantee == "cgroup":  # the tree's CPU time so far
                final = dataclasses.replace(final, tree_cpu_times=tree.cpu_times())
            self._final = final
        return self._final

    @property
    def returncode(self) -> int | None:
        """As ``subprocess``: exit code, ``-signal`` if killed, None while alive."""
        final = self.final
        return final.returncode if final is not None else None

    @property
    def released(self) -> bool:
        return self.phase is Phase.RELEASED or self.phase is Phase.ORPHANED

    # -- pipes (stdin=PIPE, stdout=PIPE, stderr=PIPE) -------------------------
    @property
    def args(self) -> object:
        """The argv given to ``spawn``/``run`` (None for ``fork`` and ``adopt``), as ``Popen.args``."""
        return self._args

    @property
    def stdin(self) -> Any:
        """The child's stdin pipe as a writable file object (binary, or text with
        ``text=True``); None unless spawned or forked with ``stdin=PIPE``. Closing it
        sends EOF."""
        return self._io.file(0) if self._io is not None else None

    @property
    def stdout(self) -> Any:
        """The child's stdout pipe as a readable file object; None unless ``stdout=PIPE``."""
        return self._io.file(1) if self._io is not None else None

    @property
    def stderr(self) -> Any:
        """The child's stderr pipe as a readable file object; None unless ``stderr=PIPE``."""
        return self._io.file(2) if self._io is not None else None

    def poll(self) -> int | None:
        """``returncode``, after collecting what is ready (never blocks). As
        :meth:`Context.dispatch`, it may run other children's callbacks too; where
        another thread dispatches (a dispatch thread, MAINLOOP), it only reads."""
        if not self.done and self._ctx._fd_to_dispatch() is not None:
            self._ctx.dispatch()
        return self.returncode

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        """Send ``input`` (bytes, or str with ``text=True``) to the child's stdin
        and close it, read its stdout and stderr to the end, and wait for its exit:
        ``(stdout, stderr)``, each None where not piped. As ``Popen.communicate``,
        but a descendant holding a pipe open does not hold it up (see the I/O
        rules in the docs). On timeout raises :class:`~childproc.TimeoutExpired`
        (also ``subprocess``'s) with the output so far; the child is not killed,
        and calling again carries on, losing nothing. Once it has returned, a
        later call returns the same output again (as ``Popen``'s)."""
        from ._communicate import communicate  # noqa: PLC0415 - the I/O half loads on first use

        return communicate(self, input, timeout)

    def _add_exit_waker(self, poke: Callable[[], None]) -> None:
        with _process.LOCK:
            self._exit_wakers = (*self._exit_wakers, poke)

    def _remove_exit_waker(self, poke: Callable[[], None]) -> None:
        with _process.LOCK:
            self._exit_wakers = tuple(p for p in self._exit_wakers if p != poke)  # (bound methods: ==)

    # -- what the application does -------------------------------------------
    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child, never to a recycled pid.

        Uses ``pidfd_send_signal`` when childproc holds a pidfd; otherwise
        ``kill()``, but only while the child is unreaped and only childproc
        reaps it (so its pid cannot have been reused). Raises
        :class:`~childproc.ChildExitedError` once the exit has been seen.
        """
        self._ctx._signal_child(self, sig)

    def terminate(self) -> None:
        """``send_signal(SIGTERM)``, except that it does nothing once the child has
        exited (as ``Popen.terminate``): what it asks for holds. A released child
        raises as with ``send_signal``: it may still run, unwatched."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """``send_signal(SIGKILL)``; nothing once the child has exited (see
        :meth:`terminate`)."""
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        try:
            self.send_signal(sig)
        except ChildExitedError:
            # Dead (its exit seen, reaped by someone else, or ESRCH from its pidfd),
            # unless it may run on, unwatched: released, orphaned by a close, or a
            # served child whose fork server went away first.
            if self.phase in (Phase.RELEASED, Phase.ORPHANED) or self._runs_on:
                raise

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's process group; the child must lead it
        (``process_group=0`` or ``start_new_session=True``). Only while the child
        is unreaped, when its group id cannot be anyone else's: after its exit
        was collected this raises :class:`~childproc.ChildExitedError`, never
        signalling a stranger (MAINLOOP, where the application reaps, refuses)."""
        self._ctx._signal_group(self, sig)

    # -- trees (kill_tree=True) ----------------------------------------------
    @property
    def tree_guarantee(self) -> str | None:
        """What :meth:`kill_tree` reaches: ``"cgroup"`` (every descendant),
        ``"process-group"`` (the descendants still in the child's group while it
        is unreaped), or None for a child started without ``kill_tree=True``."""
        return None if self._tree is None else self._tree.guarantee

    def _own_tree(self) -> Tree:
        if self._tree is None:
            raise StateError(
                f"child {self._pid} has no tree of its own: spawn or fork it with kill_tree=True "
                "to be able to signal, freeze or measure everything it starts"
            )
        return self._tree

    def kill_tree(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL) to the child and every descendant: all of
        them, at once for SIGKILL, in a cgroup tree; its process group in the
        fallback (see :attr:`tree_guarantee`). In a cgroup tree this also reaches
        descendants left after the child exited. Raises :class:`~childproc.StateError`
        for a child without ``kill_tree=True``."""
        check_signal(sig)
        self._own_tree().signal(sig)

    def freeze(self, timeout: float = 5.0) -> bool:
        """Stop the whole tree (``cgroup.freeze``; cgroup trees only): True once
        every process in it is frozen, False if that took longer than ``timeout``."""
        return self._own_tree().freeze(timeout)

    def thaw(self) -> None:
        """Resume a tree stopped by :meth:`freeze`."""
        self._own_tree().thaw()

    def tree_cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU seconds used by every process of the tree so far,
        exited ones included (cgroup trees only)."""
        return self._own_tree().cpu_times()

    def stop(self, grace: float = 5.0, sig: int = signal.SIGTERM) -> ChildEvent | None:
        """Stop the child: send ``sig`` (to its tree, if it has one), wait up to
        ``grace`` seconds for its exit (and, for a cgroup tree, for the whole tree
        to be gone), then SIGKILL (the tree) and wait for the exit (and, a little,
        for a cgroup tree to be empty).
        Returns the final :class:`~childproc.ChildEvent` (None if someone else
        reaped it). The exit is delivered once, as always: every waiter sees it
        and the callback runs once. Interrupted (``KeyboardInterrupt``), it SIGKILLs
        the child (the tree) before the interrupt goes on, without waiting, and sets
        ``kill_on_close`` (``close()`` reaps it without a warning); an error a
        callback raised meanwhile (any child's) goes on and leaves it be. In
        MAINLOOP, on the thread that reports exits, it raises :class:`StateError`
        before sending anything (it would wait for ever)."""
        self._check_stop(grace, sig)
        if not self.done and self._waits_for_report_here():
            raise StateError(
                f"stop() waits for child {self._pid}'s exit, and in MAINLOOP this thread is the one "
                "that reports exits (childproc_reaped, sigchld_occurred): stop it from another "
                "thread, or send the signal yourself (child.terminate(), child.kill())"
            )
        deadline = time.monotonic() + grace
        try:
            if not self.done or not self._tree_empty():  # (descendants left after the child: them)
                self._send_everywhere(sig)
            if not self.done:
                self.wait(grace)
            tree = self._tree
            if self.done and (tree is None or tree.wait_empty(max(0.0, deadline - time.monotonic()))):
                return self.wait()
            self._send_everywhere(signal.SIGKILL)  # (the child, or descendants it left)
            event = self.wait()
            if tree is not None:
                tree.wait_empty(SETTLE_S)  # (killed at once, bar an uninterruptible sleep)
            return event
        except BaseException as exc:
            if not isinstance(exc, Exception):  # (an interrupt: the stop is abandoned)
                self._abandon_stop()
            raise

    def _abandon_stop(self) -> None:
        """A stop cut short (an interrupt, a cancellation): SIGKILL the child (its tree),
        never raising over what cut it short, and own it (``kill_on_close``: ``close()``
        reaps it, with no warning that it still ran)."""
        self.kill_on_close = True
        with contextlib.suppress(Exception):
            self._send_everywhere(signal.SIGKILL)

    def _check_stop(self, grace: float, sig: int) -> None:
        """Refuse ``stop()``'s bad arguments before anything is sent."""
        check_signal(sig)
        if not isinstance(grace, (int, float)) or isinstance(grace, bool) or not grace >= 0:
            raise InvalidArgumentError(f"grace must be a number of seconds >= 0, not {grace!r}")

    def _tree_empty(self) -> bool:
        """Nothing left in the child's tree (True without a tree, or for a process group,
        which cannot be watched)."""
        return self._tree is None or self._tree.wait_empty(0)

    def _send_everywhere(self, sig: int) -> None:
        """``sig`` to the tree if the child has one (else to the child); nothing if it
        has exited meanwhile."""
        try:
            if self._tree is not None:
                self._tree.signal(sig)
            else:
                self.send_signal(sig)
        except ChildExitedError:
            pass

    def _waits_for_report_here(self) -> bool:
        """MAINLOOP, on the thread that reports exits, for a child whose exit the
        application reports (a fork server's comes on its exit fd): a wait for it
        here would last for ever."""
        return self._exit_fd is None and self._ctx._reports_here()

    def wait(self, timeout: float | None = None) -> ChildEvent | None:
        """Run the context's :meth:`~childproc.Context.wait` until this child's exit
        was delivered; return its final event (None on timeout, or if stolen).
        In MAINLOOP the exit comes when the application reports it, so on the
        thread that reports it raises :class:`StateError` (but for ``timeout=0``)."""
        return self._ctx._wait_child(self, timeout)

    def release(self) -> None:
        """Stop watching this child: no more callbacks; its pipes are closed.

        With ``kill_on_close``, the child is killed with SIGKILL and reaped
        (this waits for it to die). Without, it is left running and becomes the
        application's to reap (``os.waitpid(pid, 0)`` once it exits; unlike
        :meth:`Context.close`, which leaves such a child running but reaps it
        when it exits). Idempotent.
        """
        self._ctx._release_child(self)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """As ``with Popen(...)``: close the read pipes, write what ``stdin`` buffered and
        close it, and wait for the exit (``returncode`` is then set, unless the context
        was closed meanwhile). With ``kill_on_close``, :meth:`release` instead: killed
        and reaped (a handle already released: only its pipes). Left by a Ctrl-C, it
        waits at most a quarter of a second (in a terminal the child got the SIGINT
        too) and lets the ``KeyboardInterrupt`` go on; the child stays watched. In
        MAINLOOP, on the thread that reports exits, it raises :class:`StateError`
        rather than wait for ever."""
        if self.kill_on_close or self.released:
            self.release()
            return
        if self._io is not None:
            self._io.close_as_popen_exits()
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            if not self._waits_for_report_here():  # (there, nothing to wait for: it would raise)
                self.wait(_INTERRUPTED_WAIT_S)
            return
        if not self.done and self._waits_for_report_here():
            if exc_type is not None:
                return  # (the block's own exception goes on; the child stays watched)
            raise StateError(
                f"leaving 'with' for child {self._pid} waits for its exit, and in MAINLOOP this "
                "thread is the one that reports exits (childproc_reaped, sigchld_occurred): wait "
                "for it on another thread, or report its exit before the block ends"
            )
        self.wait()

    def __repr__(self) -> str:
        fd = f" pidfd={self._pidfd}" if self._pidfd is not None else ""
        final = f" {self.final}" if self._status is not None else ""
        return f"<childproc.Child pid={self._pid}{fd} {self.state.value}{final}>"
