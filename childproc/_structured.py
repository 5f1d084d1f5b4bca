"""The adapters for structured-concurrency libraries: trio, and anyio on either backend.

trio and anyio spell what an adapter needs alike (:class:`Lib` names it), so
:mod:`childproc.trio_host` and :mod:`childproc.anyio_host` are this module with
their library plugged in:

* a context is served by a task that waits for the context's fd to be readable
  and dispatches (:func:`serve`);
* a child's exit is an event its waiter sets; ``wait()`` is cancellation-safe
  (the exit is never lost; ``kill_on_cancel`` kills the child too);
* ``communicate()`` runs one task per pipe (``wait_readable``/``wait_writable``,
  then the :class:`~childproc._pump.Pump`) and one that waits for the exit and
  then for the linger, in a nursery under the call's timeout;
* ``run()`` kills the child on a timeout, a cancellation or any error, waits
  for its exit shielded, and closes its pipes before the exception goes on.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, TypeVar

from ._bridge import AsyncHandle, Bridge, hooks_for, settle, stop
from ._child import Child
from ._context import Context, Hooks
from ._errors import InvalidArgumentError, StateError
from ._policy import SigchldOwner
from ._pump import Pump
from ._results import CompletedProcess, TimeoutExpired
from ._run import RunRequest, kill, result
from ._status import ChildEvent
from ._stdio import command_of

if sys.version_info < (3, 11):  # (trio and anyio depend on the backport there)
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found, unused-ignore]

if TYPE_CHECKING:
    from ._spawn import Argv

__all__ = ["Lib", "StructuredChild", "StructuredContext", "communicate", "open_structured"]


class Lib(NamedTuple):
    """What a structured-concurrency library gives (trio's names; anyio's alike)."""

    open_nursery: Callable[[], Any]  # an async context manager with start_soon and cancel_scope
    move_on_after: Callable[[float], Any]  # a cancel scope with cancelled_caught
    wait_readable: Callable[[int], Awaitable[None]]
    wait_writable: Callable[[int], Awaitable[None]]
    notify_closing: Callable[[int], None]
    sleep: Callable[[float], Awaitable[None]]
    closed_error: type[BaseException]  # what a wait raises when its fd is closed
    event: Callable[[], Any]  # an event: set(), is_set(), await wait()
    shield: Callable[[], Any]  # a cancel scope shielded from outside cancellation
    cancelled: Callable[[], type[BaseException]]  # the cancellation exception, when asked


async def communicate(
    lib: Lib, pump: Pump, input: Any, timeout: float | None, exited: Callable[[], Awaitable[object]]
) -> tuple[Any, Any]:
    """Run ``pump`` until the child's exit (``await exited()``) and the linger are
    over; raise its :class:`~childproc.TimeoutExpired` on ``timeout``."""
    pump.start(input)
    try:
        with lib.move_on_after(float("inf") if timeout is None else timeout) as scope:
            async with lib.open_nursery() as nursery:
                for fd in list(pump.reading):
                    nursery.start_soon(_read, lib, pump, fd)
                if pump.stdin is not None:
                    nursery.start_soon(_write, lib, pump, pump.stdin)
                nursery.start_soon(_linger, lib, pump, exited, nursery.cancel_scope)
    except BaseException as exc:
        if _is_group(exc):
            _raise_sole(exc, lib.cancelled())
        raise
    if scope.cancelled_caught:
        raise pump.timed_out(timeout)
    return pump.finish()


def _raise_sole(group: BaseException, cancelled: type[BaseException]) -> None:
    """Raise the one exception an internal nursery's ``group`` stands for, if there is
    one: trio (and anyio on trio) wrap whatever a nursery's tasks raise, a single
    ``KeyboardInterrupt`` included, and ``communicate()``'s nursery is not the
    caller's business (``except KeyboardInterrupt`` must catch a Ctrl-C in it).
    Cancellations beside it are dropped (the scope that cancelled sees its own);
    with two or more other exceptions, or none, the group goes on (returns)."""
    leaves: list[BaseException] = []
    _leaves_of(group, cancelled, leaves)
    if len(leaves) == 1:
        sole = leaves[0]
        context = sole.__context__
        try:
            raise sole
        finally:
            sole.__context__ = context  # (its own, not the group's)
            del sole, context


def _is_group(exc: BaseException) -> bool:
    """An exception group (3.10 has none built in: trio's and anyio's backport's there)."""
    return any(kind.__name__ == "BaseExceptionGroup" for kind in type(exc).__mro__)


def _leaves_of(exc: BaseException, cancelled: type[BaseException], into: list[BaseException]) -> None:
    if _is_group(exc):
        for inner in exc.exceptions:  # type: ignore[attr-defined]
            _leaves_of(inner, cancelled, into)
    elif not isinstance(exc, cancelled):
        into.append(exc)


# Each task looks again after its wait: the fd may have been closed while it was
# ready to run (the exit closes stdin; notify_closing wakes only a task still
# waiting), and its number may name another file by then.
async def _read(lib: Lib, pump: Pump, fd: int) -> None:
    try:
        while True:
            if fd not in pump.reading:
                break
            await lib.wait_readable(fd)
            if fd in pump.reading and pump.readable(fd, False, time.monotonic()):
                pump.close_read(fd)
    except lib.closed_error:
        pass  # (its stream was closed by the application meanwhile)


async def _write(lib: Lib, pump: Pump, fd: int) -> None:
    try:
        while True:
            if pump.stdin != fd:
                break
            await lib.wait_writable(fd)
            if pump.stdin == fd and pump.writable(fd, False):
                pump.close_stdin()
    except lib.closed_error:
        pass  # the child exited: the rest of the input is for nobody


async def _linger(lib: Lib, pump: Pump, exited: Callable[[], Awaitable[object]], readers: Any) -> None:
    await exited()
    if pump.stdin is not None:
        lib.notify_closing(pump.stdin)  # (the writer task waits on it)
    pump.exited(time.monotonic())
    while (left := pump.linger(time.monotonic())) is not None and left > 0:
        await lib.sleep(left)
    readers.cancel()


class StructuredChild(AsyncHandle):
    """A child whose exit can be awaited (``await child.wait()``), whose pipes can
    be talked to (``communicate``, the streams), under trio or anyio."""

    __slots__ = ("_done", "_error", "_reaped_by", "_streams")
    _lib: Lib

    def __init__(self, child: Child, reaped_by: Callable[[Any], Awaitable[None]]) -> None:
        super().__init__(child)
        self._done = self._lib.event()
        self._error: BaseException | None = None
        self._streams: list[Any] = [None, None, None]
        #: Its context's wait for a killed child, which dispatches itself once the
        #: serving task has stopped (a callback raised: nothing else dispatches then).
        self._reaped_by = reaped_by

    async def _wait_killed(self) -> None:
        await self._reaped_by(self)

    def _make_stream(self, io_: Any, target: int) -> Any:
        """The library's stream for ``target``'s pipe end (see the subclasses)."""
        raise NotImplementedError

    def _stream(self, target: int) -> Any:
        io_ = self.child._io
        stream = self._streams[target]
        if stream is None and io_ is not None and io_.pipes is not None and io_.pipes.parent[target] >= 0:
            stream = self._streams[target] = self._make_stream(io_, target)
        return stream

    def _shielded(self) -> contextlib.AbstractContextManager[object]:
        return self._lib.shield()  # type: ignore[no-any-return]

    async def _close_streams(self) -> None:
        with self._lib.shield():  # (a stream's aclose() ends with a checkpoint: all of them close)
            for target in (1, 2, 0):  # (the read ends first, as Popen's exit)
                stream = self._streams[target]
                if stream is None:
                    continue
                await stream.aclose()

    @property
    def stdin(self) -> Any:
        """The stdin pipe as the library's send stream (``stdin=PIPE``), else None;
        ``aclose()`` sends EOF."""
        return self._stream(0)

    @property
    def stdout(self) -> Any:
        """The stdout pipe as the library's receive stream (``stdout=PIPE``), else None."""
        return self._stream(1)

    @property
    def stderr(self) -> Any:
        """The stderr pipe as the library's receive stream (``stderr=PIPE``), else None."""
        return self._stream(2)

    async def wait(self, *, kill_on_cancel: bool = False) -> ChildEvent:
        """The child's final :class:`~childproc.ChildEvent` once it has exited
        (cancellation-safe). ``kill_on_cancel`` kills it when the wait is cancelled
        or interrupted (trio raises a ``KeyboardInterrupt`` in the task it lands in),
        and its tree, whose processes may outlive the child, even once it has exited."""
        try:
            await self._done.wait()
        except BaseException as exc:
            self._wait_ended_by(exc, kill_on_cancel, exited=self._done.is_set())
            raise
        if self._error is not None:
            raise self._error
        final = self.child.final
        assert final is not None
        return final

    async def stop(self, grace: float = 5.0, sig: int = signal.SIGTERM) -> ChildEvent | None:
        """:meth:`Child.stop <childproc.Child.stop>` here: ``sig`` (to the tree, if the
        child has one), up to ``grace`` seconds for the exit (and a cgroup tree's
        last process), then SIGKILL; the final event."""
        return await stop(self.child, grace, sig, self._lib.sleep)

    async def communicate(self, input: Any = None, *, timeout: float | None = None) -> tuple[Any, Any]:
        """:meth:`Child.communicate <childproc.Child.communicate>` here (the same
        rules). On ``timeout`` raises :class:`~childproc.TimeoutExpired` with the
        output so far, and a later call carries on; cancelled, the same. Once it
        has returned, a later call returns the same output again."""
        io_ = self.child._io
        if io_ is None or io_.pipes is None:  # (no pipes: no streams either)
            if input:
                raise InvalidArgumentError("communicate(input=...) needs the child spawned with stdin=PIPE")
            if timeout is None:
                await self._done.wait()
                return None, None
            with self._lib.move_on_after(timeout):
                await self._done.wait()
                return None, None
            raise TimeoutExpired(command_of(self.child.args), timeout or 0.0, pid=self.pid)
        if any(stream is not None for stream in self._streams):
            raise StateError("communicate() reads the pipes itself: not after using the child's streams")
        if not io_.lock.acquire(blocking=False):
            raise StateError(f"communicate() is already running for child {self.pid}")
        try:
            if (output := io_.returned(input)) is not None:
                return output
            pump = Pump(io_, self.child.args, self.pid)
            return await communicate(self._lib, pump, input, timeout, self._done.wait)
        finally:
            if io_.closing:
                io_._close_all()
            io_.lock.release()


C = TypeVar("C", bound=StructuredChild)


_REAP_POLL_S = 0.005  # how often it dispatches itself once the serving task is gone
_SERVING_CHECK_S = 0.05  # how often a killed child's waiter checks that the serving task runs


class StructuredContext(Bridge[C]):
    """A :class:`~childproc.Context` served by a task (see :func:`open_structured`)."""

    _lib: Lib
    _child_type: type[C]

    def _new_waiter(self, child: Child) -> C:
        return self._child_type(child, self._reap_killed)

    def _finish(self, waiter: C, event: ChildEvent) -> None:
        waiter._done.set()

    def _fail(self, waiter: C, error: BaseException) -> None:
        waiter._error = error
        waiter._done.set()

    async def run(self, argv: Argv, **options: Any) -> CompletedProcess:
        """:meth:`Context.run <childproc.Context.run>` here: the same arguments,
        :class:`~childproc.CompletedProcess` and exceptions. A timeout, a
        cancellation or any other exception kills the child (SIGKILL), waits for
        its exit (shielded) and closes its pipes before it propagates."""
        req = RunRequest(options)
        child = self.spawn(argv, **req.spawn_options)
        try:
            out, err = await child.communicate(req.input, timeout=req.timeout)
        except BaseException as exc:  # a timeout, a cancellation, any error: kill and reap first
            kill(child.child)
            with self._lib.shield():
                await self._reap_killed(child)
                await settle(child.child._tree, True, self._lib.sleep)
            if isinstance(exc, TimeoutExpired):
                exc.event = child.child.final
            raise
        finally:
            if child.child._io is not None:
                child.child._io.close()
        return result(child.child, out, err, req.check)

    #: The serving task runs (it ends when a callback raised, or at the block's end).
    _serving = True

    async def _reap_killed(self, child: C) -> None:
        """Wait for a killed child's exit. Once the serving task has stopped, nobody
        else dispatches: this does, without blocking the loop (dispatch() never
        blocks; a MAINLOOP host's reporting task keeps running), and another child's
        callback error waits until the killed child is reaped."""
        error: Exception | None = None
        while not child._done.is_set():
            if not self._serving:
                try:
                    self._dispatch()  # (routes a ChildStolenError to its waiter)
                except Exception as exc:
                    error = error or exc
                if child._done.is_set() or self.context.closed:
                    break  # (closed: nothing more will come)
            with self._lib.move_on_after(_SERVING_CHECK_S if self._serving else _REAP_POLL_S):
                await child._done.wait()
        if error is not None:
            raise error

    async def _serve_while_open(self) -> None:
        try:
            await self._serve()
        finally:
            self._serving = False

    async def _serve(self) -> None:
        fd = self.context.fileno()
        while True:
            await self._lib.wait_readable(fd)
            self._dispatch()

    def _close(self) -> None:
        self.context.close()
        self._fail_all()


X = TypeVar("X", bound=StructuredContext[Any])


@asynccontextmanager
async def open_structured(
    kind: type[X], mode: SigchldOwner | None = None, *, hooks: Hooks | None = None
) -> AsyncIterator[X]:
    """``async with``: a context of ``kind``, served by a task for the block's lifetime."""
    hooks = hooks_for(mode, hooks)
    context = Context()
    try:
        context.setmode(hooks)
    except BaseException:
        context.close()
        raise
    ctx = kind(context)
    raised: list[BaseException] = []  # what the block raised
    try:
        async with kind._lib.open_nursery() as nursery:
            nursery.start_soon(ctx._serve_while_open)
            try:
                yield ctx
            except BaseException as exc:
                raised.append(exc)
                raise
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery wraps what the block raised in a group: give it back as itself,
        # so that the block's own `except CalledProcessError` (or a caller's) still
        # matches, as with the host's own API (trio.run_process, anyio.run_process).
        if not raised or _leaves(group) != raised:
            raise
        _reraise(raised.pop())
    finally:
        ctx._close()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _reraise(exc: BaseException) -> NoReturn:
    """Raise ``exc`` with the context it had (raising it here would set the group)."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context  # (no cycle through this frame)
