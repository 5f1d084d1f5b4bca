"""childproc inside an anyio program, on the asyncio and the trio backends alike.

No loop sniffing: a library that supports both event loops through anyio uses
this adapter and gets the same behaviour on either::

    async with childproc.anyio_host.open_context() as ctx:
        child = ctx.spawn(["/bin/sh", "-c", "exit 3"])
        event = await child.wait()                          # exited with status 3
        done = await ctx.run(["uname"], capture_output=True)  # a CompletedProcess

On the trio backend a task waits with ``anyio.wait_readable`` on the context's
fd and dispatches; on the asyncio backend the loop dispatches as soon as the fd
is readable (``loop.add_reader``, as :mod:`childproc.asyncio_host` does), and the
task only carries what a dispatch raised into the task group. ``spawn`` takes
the keywords of :meth:`Context.spawn <childproc.Context.spawn>`.
A child's pipes are anyio byte streams (``stdin``, ``stdout``, ``stderr``);
``communicate`` and ``run`` follow the rules of the synchronous ones, and a
cancelled ``run`` kills the child, waits for its exit and closes its pipes
before the cancellation goes on. Mode: PIDFD where the kernel has pidfds, else
SELECTIVE_REAP. Requires the ``anyio`` extra (anyio >= 4.10).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

from ._childio import ChildIO
from ._context import Hooks
from ._policy import SigchldOwner
from ._stdio import Pipes
from ._structured import Lib, StructuredChild, StructuredContext, open_structured

__all__ = ["AnyioChild", "AnyioContext", "open_context"]

_ANYIO = Lib(
    open_nursery=anyio.create_task_group,
    move_on_after=anyio.move_on_after,
    wait_readable=anyio.wait_readable,
    wait_writable=anyio.wait_writable,
    notify_closing=anyio.notify_closing,
    sleep=anyio.sleep,
    closed_error=anyio.ClosedResourceError,
    event=anyio.Event,
    shield=lambda: anyio.CancelScope(shield=True),
    cancelled=anyio.get_cancelled_exc_class,
)


class _PipeStream:
    """One pipe end of a child, closed through its :class:`~childproc._stdio.Pipes`."""

    def __init__(self, pipes: Pipes, target: int) -> None:
        self._pipes, self._target = pipes, target
        fd = pipes.parent[target]
        os.set_blocking(fd, False)
        # Before the number is closed, by us or the context: a task waiting on it
        # gets ClosedResourceError rather than waiting on a number reused later.
        pipes.hooks[target] = lambda: anyio.notify_closing(fd)

    def _fd(self) -> int:
        fd = self._pipes.parent[self._target]
        if fd < 0:
            raise anyio.ClosedResourceError
        return fd

    async def aclose(self) -> None:
        self._pipes.close(self._target)


class _Receive(_PipeStream, anyio.abc.ByteReceiveStream):
    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            fd = self._fd()
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(fd)
                continue
            if not data:
                raise anyio.EndOfStream
            return data


class _Send(_PipeStream, anyio.abc.ByteSendStream):
    async def send(self, item: bytes) -> None:
        view = memoryview(item).cast("B")
        while view:
            fd = self._fd()
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(fd)
            except BrokenPipeError as exc:
                raise anyio.BrokenResourceError from exc


class AnyioChild(StructuredChild):
    """A child whose exit can be awaited under anyio; its pipes are anyio byte
    streams (``stdin`` a ``ByteSendStream``, ``stdout``/``stderr``
    ``ByteReceiveStream`` objects; ``aclose()`` on ``stdin`` sends EOF)."""

    __slots__ = ()
    _lib = _ANYIO

    def _make_stream(self, io_: ChildIO, target: int) -> Any:
        assert io_.pipes is not None
        return _Send(io_.pipes, 0) if target == 0 else _Receive(io_.pipes, target)


class AnyioContext(StructuredContext[AnyioChild]):
    """A :class:`~childproc.Context` served by a task in an anyio task group."""

    _lib = _ANYIO
    _child_type = AnyioChild

    async def _serve(self) -> None:
        """On asyncio, the loop calls the dispatch when the fd is readable: one reader
        for the context's lifetime (``wait_readable`` adds and removes one, with a
        future, for every exit) and no turn of the loop for a task in between. What
        a dispatch raises ends this task, as it ended the waiting one."""
        if anyio.get_cancelled_exc_class() is not asyncio.CancelledError:
            await super()._serve()  # trio: no reader callbacks, a task waits
            return
        loop = asyncio.get_running_loop()
        fd = self.context.fileno()
        failed: asyncio.Future[None] = loop.create_future()
        raised: list[BaseException] = []
        _mark_asyncio()  # (the reader's calls run in this task's context: see _mark_asyncio)

        def readable() -> None:
            try:
                self._dispatch()
            except BaseException as exc:
                loop.remove_reader(fd)
                if failed.done() or isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                raised.append(exc)  # (not set_exception: a Future refuses StopIteration)
                failed.set_result(None)

        try:
            loop.add_reader(fd, readable)
        except NotImplementedError:  # pragma: no cover - a loop without readers: anyio's own way
            await super()._serve()
            return
        try:
            await failed
        finally:
            loop.remove_reader(fd)
        raise raised[0]


def _mark_asyncio() -> None:
    """Say "asyncio" to sniffio in the current task's context, which the loop's reader
    callbacks copy: a callback (``on_event``) then runs outside any task, where
    sniffio, which anyio asks for the backend, finds none under a plain
    ``asyncio.run()`` (``anyio.run()`` sets the same)."""
    try:
        import sniffio  # noqa: PLC0415 - anyio's optional helper
    except ImportError:  # pragma: no cover - anyio then asks asyncio for its running loop
        return
    sniffio.current_async_library_cvar.set("asyncio")


@asynccontextmanager
async def open_context(
    mode: SigchldOwner | None = None, *, hooks: Hooks | None = None
) -> AsyncIterator[AnyioContext]:
    """``async with open_context() as ctx``: a context served for the block's lifetime,
    on whichever backend anyio runs."""
    async with open_structured(AnyioContext, mode, hooks=hooks) as ctx:
        yield ctx
