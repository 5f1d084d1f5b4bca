"""childproc inside a trio program (and so anyio on trio): awaitable children.

A background task waits with ``trio.lowlevel.wait_readable`` on the context's
fd and dispatches; nothing else of trio's is touched (trio installs no SIGCHLD
handler, and neither does this adapter in its default mode)::

    async with childproc.trio_host.open_context() as ctx:
        child = ctx.spawn(["/bin/sh", "-c", "exit 3"])
        event = await child.wait()

Mode: PIDFD where the kernel has pidfds, else SELECTIVE_REAP (whose handler
needs the main thread). Cancellation: as in :mod:`childproc.asyncio_host`, a
cancelled ``wait()`` never loses the exit; ``kill_on_cancel=True`` also kills
the child. Requires the ``trio`` extra: ``pip install childproc[trio]``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._child import Child, EventCallback
from ._context import Context, Hooks
from ._errors import ClosedError, StateError
from ._policy import SigchldOwner
from ._spawn import Argv
from ._status import ChildEvent
from .asyncio_host import default_mode

__all__ = ["TrioChild", "TrioContext", "open_context"]


class TrioChild:
    """A child whose exit can be awaited under trio. Wraps a :class:`~childproc.Child`."""

    __slots__ = ("_done", "_error", "child")

    def __init__(self, child: Child) -> None:
        self.child = child
        self._done = trio.Event()
        self._error: BaseException | None = None

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    def send_signal(self, sig: int) -> None:
        self.child.send_signal(sig)

    def terminate(self) -> None:
        self.child.terminate()

    def kill(self) -> None:
        self.child.kill()

    async def wait(self, *, kill_on_cancel: bool = False) -> ChildEvent:
        """The child's final :class:`~childproc.ChildEvent` once it has exited
        (cancellation-safe; ``kill_on_cancel`` kills it when cancelled)."""
        try:
            await self._done.wait()
        except trio.Cancelled:
            if kill_on_cancel and not self._done.is_set():
                self.child.kill_on_close = True  # close() reaps it if its exit is not collected
                try:
                    self.child.kill()
                except StateError:
                    pass
            raise
        if self._error is not None:
            raise self._error
        final = self.child.final
        assert final is not None
        return final


class TrioContext:
    """A :class:`~childproc.Context` served by a task in a trio nursery."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self._waiters: dict[int, tuple[TrioChild, EventCallback | None]] = {}

    @property
    def mode(self) -> SigchldOwner:
        return self.context.mode

    def _on_event(self, child: Child, event: ChildEvent) -> None:
        entry = self._waiters.get(child.pid)
        if entry is None:
            return
        waiter, user = entry
        if event.terminal:
            del self._waiters[child.pid]
            waiter._done.set()
        if user is not None:
            user(child, event)

    def _wrap(self, child: Child, on_event: EventCallback | None) -> TrioChild:
        waiter = TrioChild(child)
        self._waiters[child.pid] = (waiter, on_event)
        return waiter

    def spawn(
        self,
        argv: Argv,
        *,
        on_event: EventCallback | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        pass_fds: Sequence[int] = (),
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        events: int = os.WEXITED,
        kill_on_close: bool = False,
    ) -> TrioChild:
        """:meth:`Context.spawn`, returning an awaitable child."""
        child = self.context.spawn(
            argv,
            self._on_event,
            env=env,
            cwd=cwd,
            pass_fds=pass_fds,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            events=events,
            kill_on_close=kill_on_close,
        )
        return self._wrap(child, on_event)

    def fork(
        self, *, on_event: EventCallback | None = None, events: int = os.WEXITED, kill_on_close: bool = False
    ) -> TrioChild | None:
        """:meth:`Context.fork` (the child must exec or ``os._exit``; it must not touch trio)."""
        child = self.context.fork(self._on_event, events=events, kill_on_close=kill_on_close)
        return None if child is None else self._wrap(child, on_event)

    def adopt(
        self, pid: int | None = None, *, pidfd: int | None = None, on_event: EventCallback | None = None
    ) -> TrioChild:
        """:meth:`Context.adopt`, returning an awaitable child."""
        return self._wrap(self.context.adopt(pid, self._on_event, pidfd=pidfd), on_event)

    async def run(self, argv: Argv, *, kill_on_cancel: bool = True, **kwargs: Any) -> ChildEvent:
        """Spawn ``argv`` and wait for its exit (killing it if cancelled)."""
        kwargs.setdefault("kill_on_close", True)
        return await self.spawn(argv, **kwargs).wait(kill_on_cancel=kill_on_cancel)

    async def _serve(self) -> None:
        fd = self.context.fileno()
        while True:
            await trio.lowlevel.wait_readable(fd)
            self.context.dispatch()

    def _close(self) -> None:
        self.context.close()
        for waiter, _ in self._waiters.values():
            waiter._error = ClosedError("the childproc context was closed before the child exited")
            waiter._done.set()
        self._waiters.clear()


@asynccontextmanager
async def open_context(
    mode: SigchldOwner | None = None, *, hooks: Hooks | None = None
) -> AsyncIterator[TrioContext]:
    """``async with open_context() as ctx``: a context served for the block's lifetime."""
    if hooks is None:
        hooks = Hooks(chldowner=mode if mode is not None else default_mode())
    context = Context()
    try:
        context.setmode(hooks)
    except BaseException:
        context.close()
        raise
    tctx = TrioContext(context)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tctx._serve)
            try:
                yield tctx
            finally:
                nursery.cancel_scope.cancel()
    finally:
        tctx._close()
