"""What the event-loop adapters share: a context, and one awaitable waiter per child.

An adapter subclasses :class:`Bridge` with its own waiter type (an asyncio
future, a trio event, a Twisted deferred) and says how to make one
(:meth:`Bridge._new_waiter`), how to complete it (:meth:`Bridge._finish`) and
how to fail it when the context closes (:meth:`Bridge._fail`). Everything else,
spawn/fork/adopt and routing exits to waiters, lives here once.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._child import Child, EventCallback
from ._context import Context, Hooks
from ._errors import ChildStolenError, ClosedError, InvalidArgumentError
from ._policy import SigchldOwner
from ._run import kill_and_own
from ._status import ChildEvent
from ._trees import SETTLE_S, settle_steps
from ._watchers import pidfd as _pidfd

if TYPE_CHECKING:
    from collections.abc import Generator

    from typing_extensions import Self

    from ._spawn import Argv

__all__ = ["STOP_POLL_S", "AsyncHandle", "Bridge", "WaiterBase", "default_mode", "settle", "stop"]


def hooks_for(mode: SigchldOwner | None, hooks: Hooks | None) -> Hooks:
    """An adapter's ``mode=``/``hooks=`` as the :class:`Hooks` to set (one of them, or
    :func:`default_mode`)."""
    if hooks is None:
        return Hooks(chldowner=mode if mode is not None else default_mode())
    if mode is not None:
        raise InvalidArgumentError("give either mode= or hooks=, not both")
    return hooks


def default_mode() -> SigchldOwner:
    """The adapters' default: PIDFD where pidfds work (no SIGCHLD at all), else SELECTIVE_REAP."""
    return SigchldOwner.PIDFD if _pidfd.supported() else SigchldOwner.SELECTIVE_REAP


class WaiterBase:
    """The handle an adapter returns: the :class:`~childproc.Child` plus a way to await it."""

    __slots__ = ("child",)

    def __init__(self, child: Child) -> None:
        #: The underlying handle (pid, pidfd, state, ...).
        self.child = child

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.child.pid

    @property
    def returncode(self) -> int | None:
        """:attr:`Child.returncode <childproc.Child.returncode>`: None until the exit
        was delivered, then the exit code, or ``-N`` for signal N."""
        return self.child.returncode

    @property
    def args(self) -> object:
        """The argv the child was spawned with (None for a fork), as trio's ``Process.args``."""
        return self.child.args

    def poll(self) -> int | None:
        """:attr:`returncode` (None while it runs), as trio's ``Process.poll()``: the loop
        keeps it current, so this neither waits nor dispatches."""
        return self.child.returncode

    def send_signal(self, sig: int) -> None:
        """:meth:`Child.send_signal <childproc.Child.send_signal>`: ``sig`` to the child
        alone, never to a recycled pid; :class:`~childproc.ChildExitedError` (a
        ``ProcessLookupError``) once its exit was seen."""
        self.child.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM to the child alone (its tree: ``kill_tree(signal.SIGTERM)``);
        nothing once it has exited."""
        self.child.terminate()

    def kill(self) -> None:
        """SIGKILL to the child alone (its tree: :meth:`kill_tree`); nothing once it
        has exited."""
        self.child.kill()

    def kill_tree(self, sig: int = signal.SIGKILL) -> None:
        """:meth:`Child.kill_tree <childproc.Child.kill_tree>`: ``sig`` (default
        SIGKILL) to the child and every descendant, for a child spawned with
        ``kill_tree=True`` (:class:`~childproc.StateError` otherwise)."""
        self.child.kill_tree(sig)

    def _kill_on_cancel(self) -> None:
        """A wait was cancelled with ``kill_on_cancel``: see :func:`~childproc._run.kill_and_own`."""
        kill_and_own(self.child)

    def _wait_ended_by(self, exc: BaseException, kill_on_cancel: bool, exited: bool) -> None:
        """A wait left by ``exc``: with ``kill_on_cancel``, a cancellation or an interrupt
        (no ``Exception``, no ``close()`` of the coroutine) kills the child, or what is
        left of its tree once it has exited (a tree may outlive it)."""
        if not kill_on_cancel or isinstance(exc, (Exception, GeneratorExit)):
            return
        if not exited or self.child._tree is not None:
            self._kill_on_cancel()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.child!r}>"


class AsyncHandle(WaiterBase):
    """A child handle on an ``async`` loop (asyncio, trio, anyio): awaiting it gives it
    at once, and ``async with`` it closes it as anyio's ``Process`` does."""

    __slots__ = ()

    async def wait(self, *, kill_on_cancel: bool = False) -> ChildEvent:
        raise NotImplementedError

    def __await__(self) -> Generator[Any, None, Self]:
        """``await ctx.spawn(...)`` is the handle itself, at once, as ``await
        asyncio.create_subprocess_exec(...)``, ``await trio.lowlevel.open_process(...)``
        and ``await anyio.open_process(...)`` give their process: code written for
        those ports by changing the call. Wait for the exit with ``await child.wait()``
        (``await child`` used to wait for it)."""
        yield from ()
        return self

    async def aclose(self) -> None:
        """Close the pipes (the read ends first, then stdin once what was written to
        it is out), then wait for the exit; cancelled or interrupted meanwhile, kill
        the child (and its tree) and wait for its exit shielded from the cancellation
        (``returncode`` is then set) before that goes on. As anyio's ``Process.aclose()``."""
        io_ = self.child._io
        try:
            try:
                if io_ is not None:  # what was written through the sync file (child.child.stdin)
                    with contextlib.suppress(BlockingIOError):  # (its pipe made non-blocking: a stream's)
                        io_.flush_stdin()
                await self._close_streams()  # (stdin's data may wait for the child to read it)
            finally:
                if io_ is not None:
                    io_.close()
            await self.wait(kill_on_cancel=True)
        except BaseException as exc:
            if isinstance(exc, Exception):
                raise
            self._kill_on_cancel()  # cancelled or interrupted: as a cancelled wait
            with self._shielded(), contextlib.suppress(Exception):
                await self._wait_killed()  # (a SIGKILLed child's exit: promptly)
            raise

    async def _wait_killed(self) -> None:
        """Wait for the exit of the child just killed, whoever dispatches."""
        await self.wait()

    def _shielded(self) -> contextlib.AbstractContextManager[object]:
        """A scope in which a wait is not cancelled again (asyncio cancels a task once:
        nothing is needed there)."""
        return contextlib.nullcontext()

    async def _close_streams(self) -> None:
        """Close the library's streams over the pipes, the read ones first."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        """``async with await ctx.spawn(...) as child:`` ends with :meth:`aclose`. Left
        by a cancellation, an interrupt or the close of the generator it was in
        (``GeneratorExit``: asyncio closes them when ``asyncio.run`` stops), the child
        (and its tree) is killed first: asyncio cancels a task once, so the wait in
        :meth:`aclose` would not be cancelled again and would wait for the child's own
        exit. An ``Exception`` leaves it to exit by itself, as ``Popen``'s ``with`` does."""
        try:
            if exc is not None and not isinstance(exc, Exception):
                self._kill_on_cancel()
        finally:
            await self.aclose()


async def stop(
    child: Child,
    grace: float,
    sig: int,
    sleep: Callable[[float], Awaitable[object]],
    cancelled: tuple[type[BaseException], ...] = (),
) -> ChildEvent | None:
    """:meth:`Child.stop` for an event loop: the same steps, but looking every
    ``STOP_POLL_S`` (``await sleep``) instead of blocking the loop: ``sig`` (to the
    tree), until ``grace`` is over for the exit and, for a cgroup tree, for the
    tree to be empty; then SIGKILL (the tree) and wait for the exit. Cancelled,
    it SIGKILLs the child (the tree) before the cancellation goes on, without
    waiting, and owns it (``kill_on_close``: as a cancelled ``wait(kill_on_cancel=True)``,
    ``close()`` reaps it without a warning): a cancellation is a ``BaseException`` that is no ``Exception``
    (asyncio's, trio's), or one of ``cancelled`` (Twisted's ``CancelledError``)."""
    child._check_stop(grace, sig)
    deadline = time.monotonic() + grace
    try:
        if not child.done or not child._tree_empty():  # (descendants left after the child: them)
            child._send_everywhere(sig)
        while True:
            if child.done and child._tree_empty():
                break
            if time.monotonic() >= deadline:
                child._send_everywhere(signal.SIGKILL)
                break
            await sleep(STOP_POLL_S)
        while True:
            if child.done or child.context.closed:
                break
            await sleep(STOP_POLL_S)
        killed_at = time.monotonic()
        while True:  # (a killed tree: its last members die at once, bar an uninterruptible sleep)
            if child._tree_empty() or time.monotonic() - killed_at >= SETTLE_S:
                break
            await sleep(STOP_POLL_S)
    except BaseException as exc:
        if not isinstance(exc, Exception) or isinstance(exc, cancelled):  # (the stop is abandoned)
            child._abandon_stop()
        raise
    return child.final


#: How often an adapter's ``stop()`` looks at the child and its tree.
STOP_POLL_S = 0.01


async def settle(tree: object, kill: bool, sleep: Callable[[float], Awaitable[object]]) -> None:
    """:func:`childproc._trees.settle` for an event loop: the same looks, with
    ``await sleep`` between them instead of blocking the loop (a killed tree's last
    processes, a process-group tree's members coming back). Cancelled, the tree's
    cgroup is still removed if empty (else left for a sweep)."""
    steps = settle_steps(tree, kill)
    try:
        for pause in steps:
            await sleep(pause)
    finally:
        steps.close()


W = TypeVar("W", bound=WaiterBase)


class Bridge(Generic[W]):
    """A :class:`~childproc.Context` whose children come back as waiters of type ``W``."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self._waiters: dict[int, tuple[W, EventCallback | None]] = {}
        self._loop_thread = threading.get_ident()  # (made by the loop's code, on its thread)
        #: Exits delivered on another thread (a sync wait on ``waiter.child`` there): their
        #: waiters complete on the loop's thread, at its next dispatch.
        self._delivered_elsewhere: collections.deque[tuple[W, ChildEvent]] = collections.deque()

    # -- what an adapter provides --------------------------------------------
    def _new_waiter(self, child: Child) -> W:
        raise NotImplementedError

    def _finish(self, waiter: W, event: ChildEvent) -> None:
        raise NotImplementedError

    def _fail(self, waiter: W, error: BaseException) -> None:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------
    @property
    def mode(self) -> SigchldOwner:
        return self.context.mode

    def _on_event(self, child: Child, event: ChildEvent) -> None:
        entry = self._waiters.get(child.pid)
        if entry is None:
            return
        waiter, user = entry
        terminal = event.terminal
        if terminal:
            del self._waiters[child.pid]
        try:
            if user is not None:
                user(child, event)
        finally:
            if terminal and threading.get_ident() == self._loop_thread:
                self._finish(waiter, event)
            elif terminal:  # (a loop's futures and events are not for other threads to set)
                self._delivered_elsewhere.append((waiter, event))
                self.context._wake()

    def _make(self, make: Callable[[], Child | None], on_event: EventCallback | None) -> W | None:
        """``make()`` a child and wrap it (None in a forked child). Cut short between
        the two, the child is killed: the caller has no waiter to stop it with."""
        child = None
        try:
            child = make()
            return None if child is None else self._wrap(child, on_event)
        except BaseException:
            if child is not None:
                kill_and_own(child)
            raise

    def _wrap(self, child: Child, on_event: EventCallback | None) -> W:
        waiter = self._new_waiter(child)
        self._waiters[child.pid] = (waiter, on_event)
        return waiter

    def _dispatch(self) -> None:
        """Dispatch the context; a child whose status was lost fails its own waiter
        (rather than leaving it waiting forever). Other callback errors propagate."""
        try:
            self.context.dispatch()
        except ChildStolenError as lost:
            entry = self._waiters.pop(lost.pid, None)
            if entry is None:
                raise
            self._fail(entry[0], lost)
        finally:
            while self._delivered_elsewhere:
                self._finish(*self._delivered_elsewhere.popleft())

    def _check_events(self, events: int) -> None:
        """An adapter may refuse event kinds its host cannot support."""

    def _fail_all(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for waiter, _ in waiters.values():
            self._fail(waiter, ClosedError("the childproc context was closed before the child exited"))

    def spawn(self, argv: Argv, *, on_event: EventCallback | None = None, **options: Any) -> W:
        """:meth:`Context.spawn <childproc.Context.spawn>` (the same keywords; ``on_event``
        is a keyword here), returning a waiter."""
        self._check_events(options.get("events", os.WEXITED))
        waiter = self._make(partial(self.context.spawn, argv, self._on_event, **options), on_event)
        assert waiter is not None
        return waiter

    def fork(self, *, on_event: EventCallback | None = None, **options: Any) -> W | None:
        """:meth:`Context.fork <childproc.Context.fork>` (the same keywords): a waiter in
        the parent, None in the child (which must exec or ``os._exit``; it must not
        touch the event loop)."""
        self._check_events(options.get("events", os.WEXITED))
        return self._make(partial(self.context.fork, self._on_event, **options), on_event)

    def adopt(
        self, pid: int | None = None, *, pidfd: int | None = None, on_event: EventCallback | None = None
    ) -> W:
        """:meth:`Context.adopt <childproc.Context.adopt>`, returning a waiter."""
        return self._wrap(self.context.adopt(pid, self._on_event, pidfd=pidfd), on_event)
