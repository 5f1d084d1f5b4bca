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

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from ._bridge import Bridge, WaiterBase, default_mode
from ._child import Child
from ._context import Context, Hooks
from ._errors import InvalidArgumentError, StateError
from ._policy import SigchldOwner
from ._pump import Pump
from ._results import CompletedProcess, TimeoutExpired
from ._run import kill, result, streams_for
from ._status import ChildEvent
from ._stdio import command_of

if TYPE_CHECKING:
    from ._spawn import Argv

__all__ = ["TrioChild", "TrioContext", "open_context"]


class TrioChild(WaiterBase):
    """A child whose exit can be awaited under trio."""

    __slots__ = ("_done", "_error", "_streams")

    def __init__(self, child: Child) -> None:
        super().__init__(child)
        self._done = trio.Event()
        self._error: BaseException | None = None
        self._streams: list[Any] = [None, None, None]

    def _stream(self, target: int) -> Any:
        io_ = self.child._io
        stream = self._streams[target]
        if stream is None and io_ is not None and io_.pipes is not None and io_.pipes.parent[target] >= 0:
            # The stream owns the fd from here (trio's FdStream closes it on aclose).
            fd, io_.pipes.parent[target] = io_.pipes.parent[target], -1
            stream = self._streams[target] = trio.lowlevel.FdStream(fd)
        return stream

    @property
    def stdin(self) -> trio.abc.SendStream | None:
        """The stdin pipe as a trio ``SendStream`` (``stdin=PIPE``), else None; it owns
        its fd from the first access (``aclose()`` sends EOF)."""
        return self._stream(0)  # type: ignore[no-any-return]

    @property
    def stdout(self) -> trio.abc.ReceiveStream | None:
        """The stdout pipe as a trio ``ReceiveStream`` (``stdout=PIPE``), else None."""
        return self._stream(1)  # type: ignore[no-any-return]

    @property
    def stderr(self) -> trio.abc.ReceiveStream | None:
        """The stderr pipe as a trio ``ReceiveStream`` (``stderr=PIPE``), else None."""
        return self._stream(2)  # type: ignore[no-any-return]

    async def communicate(self, input: Any = None, *, timeout: float | None = None) -> tuple[Any, Any]:
        """:meth:`Child.communicate <childproc.Child.communicate>` under trio (the same
        rules). On ``timeout`` raises :class:`~childproc.TimeoutExpired` with the
        output so far, and a later call carries on; cancelled, the same."""
        io_ = self.child._io
        if any(stream is not None for stream in self._streams):
            raise StateError(
                "communicate() reads the pipes itself: not after using child.stdin/stdout/stderr"
            )
        if io_ is None or io_.pipes is None:
            if input:
                raise InvalidArgumentError("communicate(input=...) needs the child spawned with stdin=PIPE")
            with trio.move_on_after(float("inf") if timeout is None else timeout):
                await self._done.wait()
                return None, None
            raise TimeoutExpired(command_of(self.child.args), timeout or 0.0, pid=self.pid)
        if not io_.lock.acquire(blocking=False):
            raise StateError(f"communicate() is already running for child {self.pid}")
        try:
            pump = Pump(io_, self.child.args, self.pid)
            pump.start(input)
            with trio.move_on_after(float("inf") if timeout is None else timeout) as scope:
                async with trio.open_nursery() as nursery:
                    for fd in list(pump.reading):
                        nursery.start_soon(_read, pump, fd)
                    if pump.stdin is not None:
                        nursery.start_soon(_write, pump, pump.stdin)
                    nursery.start_soon(self._linger, pump, nursery.cancel_scope)
            if scope.cancelled_caught:
                raise pump.timed_out(timeout)
            return pump.finish()
        finally:
            io_.lock.release()

    async def _linger(self, pump: Pump, readers: trio.CancelScope) -> None:
        await self._done.wait()
        if pump.stdin is not None:
            trio.lowlevel.notify_closing(pump.stdin)  # (the writer task waits on it)
        pump.exited(time.monotonic())
        while (left := pump.linger(time.monotonic())) is not None and left > 0:
            await trio.sleep(left)
        readers.cancel()

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

    async def run(
        self,
        argv: Argv,
        *,
        input: Any = None,
        capture_output: bool = False,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        timeout: float | None = None,
        check: bool = False,
        text: bool = False,
        encoding: str | None = None,
        errors: str | None = None,
        universal_newlines: bool | None = None,
        **kwargs: Any,
    ) -> CompletedProcess:
        """:meth:`Context.run <childproc.Context.run>` under trio: the same arguments,
        :class:`~childproc.CompletedProcess` and exceptions. A timeout, a
        cancellation or any other exception kills the child (SIGKILL), waits for
        its exit (shielded) and closes its pipes before it propagates."""
        stdin, stdout, stderr, text = streams_for(
            input=input,
            capture_output=capture_output,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            text=text,
            universal_newlines=universal_newlines,
        )
        kwargs.setdefault("kill_on_close", True)
        std = {"stdin": stdin, "stdout": stdout, "stderr": stderr}
        child = self.spawn(argv, text=text, encoding=encoding, errors=errors, **std, **kwargs)
        try:
            out, err = await child.communicate(input, timeout=timeout)
        except TimeoutExpired as exc:
            kill(child.child)
            with trio.CancelScope(shield=True):
                await child._done.wait()
            exc.event = child.child.final
            raise
        except BaseException:
            kill(child.child)
            with trio.CancelScope(shield=True):
                await child._done.wait()
            raise
        finally:
            if child.child._io is not None:
                child.child._io.close()
        return result(child.child, out, err, check)

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


async def _read(pump: Pump, fd: int) -> None:
    while fd in pump.reading:
        await trio.lowlevel.wait_readable(fd)
        if pump.readable(fd, False, time.monotonic()):
            pump.close_read(fd)


async def _write(pump: Pump, fd: int) -> None:
    try:
        while pump.stdin == fd:
            await trio.lowlevel.wait_writable(fd)
            if pump.writable(fd, False):
                pump.close_stdin()
    except trio.ClosedResourceError:
        pass  # the child exited: the rest of the input is for nobody
