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

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from ._bridge import Bridge, WaiterBase, default_mode
from ._child import Child
from ._context import Context, Hooks
from ._policy import SigchldOwner
from ._status import ChildEvent

if TYPE_CHECKING:
    from ._spawn import Argv

__all__ = ["TrioChild", "TrioContext", "open_context"]


class TrioChild(WaiterBase):
    """A child whose exit can be awaited under trio."""

    __slots__ = ("_done", "_error")

    def __init__(self, child: Child) -> None:
        super().__init__(child)
        self._done = trio.Event()
        self._error: BaseException | None = None

    async def wait(self, *, kill_on_cancel: bool = False) -> ChildEvent:
        """The child's final :class:`~childproc.ChildEvent` once it has exited
        (cancellation-safe; ``kill_on_cancel`` kills it when cancelled)."""
        try:
            await self._done.wait()
        except trio.Cancelled:
            if kill_on_cancel and not self._done.is_set():
                self._kill_on_cancel()
            raise
        if self._error is not None:
            raise self._error
        final = self.child.final
        assert final is not None
        return final


class TrioContext(Bridge[TrioChild]):
    """A :class:`~childproc.Context` served by a task in a trio nursery."""

    def _new_waiter(self, child: Child) -> TrioChild:
        return TrioChild(child)

    def _finish(self, waiter: TrioChild, event: ChildEvent) -> None:
        waiter._done.set()

    def _fail(self, waiter: TrioChild, error: BaseException) -> None:
        waiter._error = error
        waiter._done.set()

    async def run(self, argv: Argv, *, kill_on_cancel: bool = True, **kwargs: Any) -> ChildEvent:
        """Spawn ``argv`` and wait for its exit (killing it if cancelled)."""
        kwargs.setdefault("kill_on_close", True)
        return await self.spawn(argv, **kwargs).wait(kill_on_cancel=kill_on_cancel)

    async def _serve(self) -> None:
        fd = self.context.fileno()
        while True:
            await trio.lowlevel.wait_readable(fd)
            self._dispatch()

    def _close(self) -> None:
        self.context.close()
        self._fail_all()


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
