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
from typing import Any

import trio

from ._context import Hooks
from ._errors import StateError
from ._policy import SigchldOwner
from ._structured import Lib, StructuredChild, StructuredContext, open_structured

__all__ = ["TrioChild", "TrioContext", "open_context"]

_TRIO = Lib(
    open_nursery=trio.open_nursery,
    move_on_after=trio.move_on_after,
    wait_readable=trio.lowlevel.wait_readable,
    wait_writable=trio.lowlevel.wait_writable,
    notify_closing=trio.lowlevel.notify_closing,
    sleep=trio.sleep,
    closed_error=trio.ClosedResourceError,
    event=trio.Event,
    shield=lambda: trio.CancelScope(shield=True),
    cancelled=lambda: trio.Cancelled,
)


class TrioChild(StructuredChild):
    """A child whose exit can be awaited under trio; its pipes are trio
    ``FdStream`` objects (``stdin``, ``stdout``, ``stderr``), each owning its fd
    from the first access (``aclose()`` closes it; on ``stdin``, that is EOF)."""

    __slots__ = ()
    _lib = _TRIO

    def _make_stream(self, io_: Any, target: int) -> trio.lowlevel.FdStream:
        fd, io_.pipes.parent[target] = io_.pipes.parent[target], -1  # (the stream's from here)
        return trio.lowlevel.FdStream(fd)


class TrioContext(StructuredContext[TrioChild]):
    """A :class:`~childproc.Context` served by a task in a trio nursery."""

    _lib = _TRIO
    _child_type = TrioChild


@asynccontextmanager
async def open_context(
    mode: SigchldOwner | None = None, *, hooks: Hooks | None = None
) -> AsyncIterator[TrioContext]:
    """``async with open_context() as ctx``: a context served for the block's lifetime."""
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        raise StateError(
            "childproc.trio_host runs under trio (trio.run); under asyncio use "
            "childproc.asyncio_host, and for code that runs on either, childproc.anyio_host"
        ) from None
    async with open_structured(TrioContext, mode, hooks=hooks) as ctx:
        yield ctx
