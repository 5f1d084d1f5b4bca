"""childproc inside an asyncio program: awaitable children, nothing taken from the host.

The context's fd is attached with ``loop.add_reader``; the adapter never calls
``loop.add_signal_handler`` or ``signal.set_wakeup_fd``, which belong to the
host. It works on the default loop and on uvloop::

    async with childproc.asyncio_host.open_context() as ctx:
        child = ctx.spawn(["/bin/sh", "-c", "exit 3"])
        event = await child.wait()            # ChildEvent: exited with status 3

Mode: by default PIDFD where the kernel has pidfds (no SIGCHLD handler at all,
steal-free), else SELECTIVE_REAP. Under uvloop a mode that would install a
SIGCHLD handler is refused (libuv owns SIGCHLD there), so without pidfds use
MAINLOOP.

Cancellation: cancelling ``await child.wait()`` never loses the exit. The
child's exit is recorded on its handle, and a later ``wait()`` returns it at
once. With ``kill_on_cancel=True`` the child is also killed (SIGKILL) when the
wait is cancelled.

Threads: callbacks and futures complete on the loop's thread. Do not call the
wrapped context's ``dispatch``/``wait`` yourself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ._aio_pipes import reader_for, writer_for
from ._bridge import AsyncHandle, Bridge, default_mode, hooks_for, settle, stop
from ._child import Child, EventCallback
from ._childio import ChildIO, default_encoding
from ._context import Context, Hooks
from ._errors import InvalidArgumentError, StateError
from ._policy import SigchldOwner, wants_handler
from ._pump import PIPE_LINGER_S, Driver, Pump
from ._results import CompletedProcess, TimeoutExpired
from ._run import RunRequest, kill, result
from ._sink import Sink
from ._status import ChildEvent
from ._stdio import command_of
from ._watchers import pidfd as _pidfd

if TYPE_CHECKING:
    from ._spawn import Argv

__all__ = ["STREAM_LIMIT", "AsyncChild", "AsyncContext", "default_mode", "open_context"]

#: The default buffer limit of a child's ``StreamReader`` objects (asyncio's own).
STREAM_LIMIT = 2**16


def _refuse_stealing_watcher() -> None:
    """asyncio's FastChildWatcher (Python < 3.14) reaps with waitpid(-1): refuse it."""
    if sys.version_info >= (3, 14):
        return  # child watchers are gone: asyncio uses pidfds or a thread per child
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            watcher = asyncio.get_child_watcher()
        except (NotImplementedError, RuntimeError):  # pragma: no cover
            return
    if type(watcher).__name__ == "FastChildWatcher":
        raise StateError(
            "asyncio's FastChildWatcher reaps every child of the process with waitpid(-1): it "
            "would take childproc's children. Use asyncio's default ThreadedChildWatcher (or "
            "PidfdChildWatcher) with childproc"
        )


def _is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.split(".")[0] == "uvloop"


class AsyncChild(AsyncHandle):
    """A child whose exit can be awaited: ``await child.wait()`` (``await child`` is
    the handle itself, as ``await asyncio.create_subprocess_exec(...)`` gives its
    process)."""

    __slots__ = ("_awaiting", "_exit", "_limit", "_streams", "_tasks")

    def __init__(self, child: Child, exit_future: asyncio.Future[ChildEvent]) -> None:
        super().__init__(child)
        self._limit = STREAM_LIMIT  # the StreamReaders' buffer limit (spawn's limit=)
        self._exit = exit_future  # the record: done once the exit (or a failure) is known
        self._awaiting: list[asyncio.Future[ChildEvent]] = []  # see _exited()
        self._streams: list[Any] = [None, None, None]
        self._tasks: list[asyncio.Future[None]] = []  # a communicate()'s through the streams

    def _exited(self) -> asyncio.Future[ChildEvent]:
        """A future of the exit for one awaiter alone: cancelling it cancels nobody
        else's. What ``asyncio.shield(self._exit)`` gives, but completed directly
        with the record (a shield's relay costs a turn of the loop per await)."""
        if self._exit.done():
            return self._exit  # awaiting a done future does not suspend
        fut: asyncio.Future[ChildEvent] = self._exit.get_loop().create_future()
        self._awaiting = [f for f in self._awaiting if not f.done()]
        self._awaiting.append(fut)
        return fut

    def _settle(self, event: ChildEvent | None, error: BaseException | None) -> None:
        """Complete the record and every awaiter's future (once)."""
        if self._exit.done():
            return
        awaiting, self._awaiting = self._awaiting, []
        for fut in (self._exit, *awaiting):
            if fut.done():
                continue  # an awaiter cancelled
            if error is None:
                fut.set_result(event)  # type: ignore[arg-type]
            else:
                fut.set_exception(error)
                fut.exception()  # awaiters still get it; nobody else is told it went unread

    def _stream(self, target: int) -> Any:
        io_ = self.child._io
        stream = self._streams[target]
        if stream is None and io_ is not None and io_.pipes is not None and io_.pipes.parent[target] >= 0:
            loop = self._exit.get_loop()
            stream = (
                writer_for(loop, io_.pipes)
                if target == 0
                else reader_for(loop, io_.pipes, target, self._limit)
            )
            self._streams[target] = stream
        return stream

    async def _close_streams(self) -> None:
        io_ = self.child._io
        if io_ is None or io_.pipes is None:
            return
        if not io_.lock.acquire(blocking=False):
            return  # a communicate() runs: the pipes are its to close when it stops
        try:
            io_.pipes.close(1)  # (the readers' transports stop first: their pipes' hooks)
            io_.pipes.close(2)
        finally:
            io_.lock.release()
        writer = self._streams[0]
        if writer is not None:
            writer.close()  # (the pipe closes once what was written is out)
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @property
    def stdin(self) -> asyncio.StreamWriter | None:
        """The stdin pipe as an :class:`asyncio.StreamWriter` (``stdin=PIPE``), else None.
        ``close()`` sends EOF once what was written is out."""
        return self._stream(0)  # type: ignore[no-any-return]

    @property
    def stdout(self) -> asyncio.StreamReader | None:
        """The stdout pipe as an :class:`asyncio.StreamReader` (``stdout=PIPE``), else None.
        Bytes, as asyncio's streams are, even with ``text=True`` (which applies to
        :meth:`communicate` and ``run``)."""
        return self._stream(1)  # type: ignore[no-any-return]

    @property
    def stderr(self) -> asyncio.StreamReader | None:
        """The stderr pipe as an :class:`asyncio.StreamReader` (``stderr=PIPE``), else None."""
        return self._stream(2)  # type: ignore[no-any-return]

    async def wait(self, *, kill_on_cancel: bool = False) -> ChildEvent:
        """The child's final :class:`~childproc.ChildEvent`, once it has exited.

        Cancellation-safe: the exit is never lost (the next ``wait()`` gets it).
        With ``kill_on_cancel``, a cancelled (or interrupted) wait also SIGKILLs the
        child, and its tree (``kill_tree=True``), whose processes may outlive the child.
        """
        try:
            if kill_on_cancel and self.child._tree is not None and self._exit.done():
                # A checkpoint, as trio's and anyio's waits have: awaiting a done future
                # does not suspend, so a cancellation due would miss what is left of the tree.
                await asyncio.sleep(0)
            return await self._exited()
        except BaseException as exc:
            self._wait_ended_by(exc, kill_on_cancel, exited=self._exit.done())
            raise

    async def stop(self, grace: float = 5.0, sig: int = signal.SIGTERM) -> ChildEvent | None:
        """:meth:`Child.stop <childproc.Child.stop>` on the loop: ``sig`` (to the tree,
        if the child has one), up to ``grace`` seconds for the exit (and a cgroup
        tree's last process), then SIGKILL; the final event."""
        return await stop(self.child, grace, sig, asyncio.sleep)

    async def communicate(self, input: Any = None, *, timeout: float | None = None) -> tuple[Any, Any]:
        """:meth:`Child.communicate <childproc.Child.communicate>` on the loop: feed
        ``input``, read stdout and stderr (the I/O rules of the sync one: a
        descendant holding a pipe holds nobody up), await the exit. On ``timeout``
        raises :class:`~childproc.TimeoutExpired` with the output so far, and a
        later call carries on; cancelled, the same (nothing is lost, the child is
        not killed). Once it has returned, a later call returns the same output."""
        io_ = self.child._io
        if io_ is None or io_.pipes is None:
            if input:
                raise InvalidArgumentError("communicate(input=...) needs the child spawned with stdin=PIPE")
            if timeout is None:
                await self._exited()
                return None, None
            try:
                await asyncio.wait_for(self._exited(), timeout)
            except asyncio.TimeoutError:
                raise TimeoutExpired(command_of(self.child.args), timeout or 0.0, pid=self.pid) from None
            return None, None
        if not io_.lock.acquire(blocking=False):
            raise StateError(f"communicate() is already running for child {self.pid}")
        try:
            if (output := io_.returned(input)) is not None:
                return output
            if any(stream is not None for stream in self._streams):
                return await self._communicate_streams(io_, input, timeout)
            return await _LoopPump(self, io_).run(input, timeout)
        finally:
            if io_.closing:
                io_._close_all()
            io_.lock.release()

    async def _communicate_streams(self, io_: ChildIO, input: Any, timeout: float | None) -> tuple[Any, Any]:
        """communicate() once the application used the streams: through them (what
        they buffered comes first), the linger bounded by ``PIPE_LINGER_S`` after the
        exit. The feeding and reading tasks outlive a timeout: the next call waits
        for the same ones, so nothing is lost or written twice."""
        pump = Pump(io_, self.child.args, self.pid)
        if io_.started:
            if input:
                raise InvalidArgumentError(
                    "communicate() carries on where a timeout stopped it: give no new input"
                )
        else:
            if isinstance(input, str):
                input = input.encode(io_.encoding or default_encoding(), io_.errors or "strict")
            stdin = self._stream(0)
            if stdin is not None:
                self._tasks.append(asyncio.ensure_future(_feed(stdin, input)))
            for target in (1, 2):
                reader = self._stream(target)
                if reader is not None:
                    sink = io_.sinks.setdefault(target, Sink())
                    self._tasks.append(asyncio.ensure_future(_drain(reader, sink)))
            io_.started = True
        try:
            await asyncio.wait_for(self._exited(), timeout)
        except asyncio.TimeoutError:
            raise pump.timed_out(timeout) from None
        tasks, self._tasks = self._tasks, []
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=PIPE_LINGER_S)
            for task in pending:
                task.cancel()  # a descendant holds a pipe: what the child wrote is in by now
            for task in done:
                task.exception()  # (retrieved: a reader's error is the transport's, reported there)
        for target in (1, 2):
            if self._streams[target] is not None:
                self._streams[target]._transport.close()
        return pump.finish()


async def _feed(writer: asyncio.StreamWriter, data: bytes | None) -> None:
    try:
        if data:
            writer.write(data)
            await writer.drain()
        writer.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the child closed its stdin: not an error


async def _drain(reader: asyncio.StreamReader, sink: Sink) -> None:
    while chunk := await reader.read(1 << 20):
        sink.write(chunk)


class _LoopPump:
    """A :class:`~childproc._pump.Driver` on the running loop; the exit comes from the
    child's future."""

    def __init__(self, child: AsyncChild, io_: ChildIO) -> None:
        self.child = child
        self.pump = Pump(io_, child.child.args, child.pid)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _finished(self, exc: BaseException | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)

    async def run(self, input: Any, timeout: float | None) -> tuple[Any, Any]:
        pump = self.pump
        pump.start(input)
        driver = Driver(pump, asyncio.get_running_loop(), self.child._exit.done, self._finished)

        def exited(_: object) -> None:
            driver.poke()

        self.child._exit.add_done_callback(exited)
        try:
            driver.start()
            await asyncio.wait_for(asyncio.shield(self.done), timeout)
        except asyncio.TimeoutError:
            raise pump.timed_out(timeout) from None
        finally:
            self.child._exit.remove_done_callback(exited)
            driver.stop()
        return pump.finish()


class AsyncContext(Bridge[AsyncChild]):
    """A :class:`~childproc.Context` attached to a running asyncio loop."""

    def __init__(
        self,
        mode: SigchldOwner | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        _refuse_stealing_watcher()
        hooks = hooks_for(mode, hooks)
        if _is_uvloop(self.loop) and wants_handler(hooks.chldowner, 1, _pidfd.supported(), 0):
            raise StateError(
                f"{hooks.chldowner.name} mode would install a SIGCHLD handler, but under uvloop libuv "
                "owns SIGCHLD. Use PIDFD (needs pidfds) or MAINLOOP, or SELECTIVE_REAP where pidfds work"
            )
        super().__init__(Context())
        try:
            self.context.setmode(hooks)
            self._fd = self.context.fileno()
            self.loop.add_reader(self._fd, self._readable)
        except BaseException:
            self.context.close()
            raise
        self._closed = False

    def _check_events(self, events: int) -> None:
        if events & (os.WSTOPPED | os.WCONTINUED) and _is_uvloop(self.loop):
            raise StateError(
                "stop/continue events need childproc's SIGCHLD handler, and under uvloop libuv owns "
                "SIGCHLD: ask for os.WEXITED only"
            )

    def _new_waiter(self, child: Child) -> AsyncChild:
        return AsyncChild(child, self.loop.create_future())

    def spawn(
        self, argv: Argv, *, on_event: EventCallback | None = None, limit: int = STREAM_LIMIT, **options: Any
    ) -> AsyncChild:
        """:meth:`Context.spawn <childproc.Context.spawn>` (the same keywords), returning
        an :class:`AsyncChild`. ``limit``: the buffer limit of its ``StreamReader``
        objects, as ``asyncio.create_subprocess_exec`` takes it (64 KiB: a longer line
        makes ``readline()`` raise)."""
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise InvalidArgumentError(f"limit must be a number of bytes (an int > 0), not {limit!r}")
        child = super().spawn(argv, on_event=on_event, **options)
        child._limit = limit
        return child

    def _finish(self, waiter: AsyncChild, event: ChildEvent) -> None:
        waiter._settle(event, None)

    def _fail(self, waiter: AsyncChild, error: BaseException) -> None:
        waiter._settle(None, error)

    def _readable(self) -> None:
        try:
            self._dispatch()
        except Exception as exc:  # a callback raised: the loop's handler reports it
            self.loop.call_exception_handler(
                {"message": "exception in a childproc callback", "exception": exc, "context": self.context}
            )

    async def run(self, argv: Argv, **options: Any) -> CompletedProcess:
        """:meth:`Context.run <childproc.Context.run>` on the loop: the same arguments,
        :class:`~childproc.CompletedProcess` and exceptions. A timeout, a
        cancellation or any other exception kills the child (SIGKILL), waits for
        its exit and closes its pipes before it propagates."""
        req = RunRequest(options)
        child = self.spawn(argv, **req.spawn_options)
        try:
            out, err = await child.communicate(req.input, timeout=req.timeout)
        except TimeoutExpired as exc:
            kill(child.child)
            await child._exited()
            await settle(child.child._tree, True, asyncio.sleep)
            exc.event = child.child.final
            raise
        except BaseException:
            kill(child.child)
            try:
                await child._exited()  # (a second cancellation lands here: see close())
            except BaseException:
                pass
            try:
                await settle(child.child._tree, True, asyncio.sleep)
            except asyncio.CancelledError:
                pass  # (cut short by another cancellation: its cgroup was retired all the same)
            raise
        finally:
            if child.child._io is not None:
                child.child._io.close()
        return result(child.child, out, err, req.check)

    def close(self) -> None:
        """Detach from the loop and close the context (see :meth:`Context.close`).
        Awaiters of children that had not exited get :class:`~childproc.ClosedError`."""
        if self._closed:
            return
        self._closed = True
        try:
            self.loop.remove_reader(self._fd)
        finally:
            self.context.close()
            self._fail_all()

    async def __aenter__(self) -> AsyncContext:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


@asynccontextmanager
async def open_context(
    mode: SigchldOwner | None = None, *, hooks: Hooks | None = None
) -> AsyncIterator[AsyncContext]:
    """``async with open_context() as ctx``: an :class:`AsyncContext` on the running loop."""
    ctx = AsyncContext(mode, hooks=hooks)
    try:
        yield ctx
    finally:
        ctx.close()
