"""Talking to a child through its pipes: :meth:`Child.communicate` and :meth:`Context.run`.

The rules (docs: "Pipes, output and timeouts")
-----------------------------------------------
* ``communicate`` writes ``input`` to the child's stdin (non-blocking, as much
  as the pipe takes each time), reads stdout and stderr as they come (never a
  deadlock, whatever the sizes), and returns once the child has exited and its
  output is read. A child that closes its stdin early is not an error.
* **The exit decides, not the pipes.** childproc knows when the child exited
  (its exit is delivered exactly once, through the context). From then on the
  pipes are read while they have data, until EOF, or until they have been quiet
  for :data:`PIPE_QUIET_S`, and for at most :data:`PIPE_LINGER_S` after the
  exit. Everything the child wrote before it exited is in the pipe by then and
  is kept; a grandchild that inherited a pipe (``sh -c 'sleep 100 & echo
  hi'``) holds nobody up. (``subprocess`` and asyncio wait for every holder.)
* A timeout raises :class:`~childproc.TimeoutExpired` with what was read so
  far; the child goes on, and a later call carries on where this one stopped,
  losing nothing. :meth:`Context.run` kills and reaps the child instead.
* This thread never reaps: it dispatches the context when its fd is readable
  (unless another thread does: a dispatch thread, or the application in
  MAINLOOP), and the exit's delivery, on whichever thread, wakes it.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from typing import Any, Protocol

from ._errors import ClosedError, InvalidArgumentError, StateError
from ._results import TimeoutExpired
from ._sink import Sink
from ._stdio import ChildIO, command_of, default_encoding
from ._waker import Waker


class Child(Protocol):
    """What this module needs of a :class:`~childproc.Child` (no import: the handle
    loads this module on first use)."""

    _io: ChildIO | None
    _ctx: Any

    @property
    def pid(self) -> int: ...
    @property
    def args(self) -> object: ...
    @property
    def done(self) -> bool: ...
    def _add_exit_waker(self, poke: Callable[[], None]) -> None: ...
    def _remove_exit_waker(self, poke: Callable[[], None]) -> None: ...


__all__ = ["PIPE_LINGER_S", "PIPE_QUIET_S", "communicate"]

#: After the child's exit, stop reading a pipe that has been quiet this long (seconds).
PIPE_QUIET_S = 0.05
#: After the child's exit, stop reading its pipes this long after it at the latest.
PIPE_LINGER_S = 0.5

_TICK_S = 1.0  # the longest sleep: closing contexts and lost wake-ups are noticed by then
_CHUNK = 1 << 20  # bytes offered to the stdin pipe per write


def _decode(io_: ChildIO, data: bytes | None) -> Any:
    if data is None or not io_.text:
        return data
    text = data.decode(io_.encoding or default_encoding(), io_.errors or "strict")
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def communicate(child: Child, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
    """See :meth:`Child.communicate`."""
    io_: ChildIO | None = child._io
    if io_ is None or io_.pipes is None:
        if input:
            raise InvalidArgumentError("communicate(input=...) needs the child spawned with stdin=PIPE")
        if child._ctx._wait_child(child, timeout) is None and not child.done:
            raise TimeoutExpired(command_of(child.args), timeout or 0.0, pid=child.pid)
        return None, None
    if not io_.lock.acquire(blocking=False):
        raise StateError(f"communicate() is already running for child {child.pid} on another thread")
    try:
        return _communicate(child, io_, input, timeout)
    finally:
        io_.lock.release()


def _start(io_: ChildIO, input: Any) -> None:
    pipes = io_.pipes
    assert pipes is not None
    if io_.started:
        if input:
            raise InvalidArgumentError(
                "communicate() carries on where a timeout stopped it: give no new input"
            )
        return
    if input is not None and pipes.parent[0] < 0:
        raise InvalidArgumentError("communicate(input=...) needs the child spawned with stdin=PIPE")
    if isinstance(input, str):
        if not io_.text:
            raise InvalidArgumentError("input is str: spawn with text=True, or give bytes")
        input = input.encode(io_.encoding or default_encoding(), io_.errors or "strict")
    stdin = io_._files[0]
    if stdin is not None and not stdin.closed:
        try:
            stdin.flush()  # what the application wrote through child.stdin goes first
        except BrokenPipeError:
            pass
    for target in (1, 2):
        if pipes.parent[target] >= 0:
            os.set_blocking(pipes.parent[target], False)
            io_.sinks[target] = sink = Sink()
            f = io_._files[target]
            if f is not None and not io_.text and not f.closed:
                # Bytes the application's reader already buffered come first (peek
                # does not block now: the fd is non-blocking).
                buffered = f.peek()
                if buffered:
                    sink.write(f.read(len(buffered)))
    if pipes.parent[0] >= 0:
        if input:
            os.set_blocking(pipes.parent[0], False)
            io_.input = memoryview(input).cast("B")
        else:
            _close(io_, 0)
    io_.started = True


def _close(io_: ChildIO, target: int) -> None:
    f = io_._files[target]
    if f is not None and target == 0:
        try:
            f.close()  # (flushes: nothing is buffered once communicate started)
        except (BrokenPipeError, ValueError):
            pass
    assert io_.pipes is not None
    io_.pipes.close(target)


def _communicate(child: Child, io_: ChildIO, input: Any, timeout: float | None) -> tuple[Any, Any]:
    ctx = child._ctx
    if not child.done and ctx._reports_here():
        raise StateError(
            "communicate() waits for the child's exit, and in MAINLOOP this thread is the one "
            "that reports exits (childproc_reaped, sigchld_occurred): call it from another thread"
        )
    deadline = None if timeout is None else time.monotonic() + timeout
    _start(io_, input)
    pipes = io_.pipes
    assert pipes is not None
    waker = Waker()
    poller = select.poll()
    child._add_exit_waker(waker.poke)
    try:
        poller.register(waker.rfd, select.POLLIN)
        dispatch_fd = ctx._fd_to_dispatch()
        if dispatch_fd is not None:
            poller.register(dispatch_fd, select.POLLIN)
        reading = {pipes.parent[t]: t for t in (1, 2) if pipes.parent[t] >= 0}
        for fd in reading:
            poller.register(fd, select.POLLIN)
        if pipes.parent[0] >= 0:
            poller.register(pipes.parent[0], select.POLLOUT)
        exit_at: float | None = None
        last_data = 0.0
        while True:
            now = time.monotonic()
            if exit_at is None and child.done:
                exit_at = last_data = now
                if pipes.parent[0] >= 0:  # nobody will read the rest of the input
                    poller.unregister(pipes.parent[0])
                    _close(io_, 0)
            if exit_at is not None:
                if not reading or now >= min(last_data + PIPE_QUIET_S, exit_at + PIPE_LINGER_S):
                    break
                wait_s = min(last_data + PIPE_QUIET_S, exit_at + PIPE_LINGER_S) - now
            else:
                wait_s = _TICK_S
            if deadline is not None:
                if now >= deadline:
                    raise _timed_out(child, io_, timeout)
                wait_s = min(wait_s, deadline - now)
            for fd, what in poller.poll(max(0.0, wait_s) * 1000):
                if fd in reading:
                    got = io_.sinks[reading[fd]].read_from(fd)
                    if got == 0 or (got is None and what & (select.POLLHUP | select.POLLERR)):
                        poller.unregister(fd)
                        pipes.close(reading.pop(fd))
                    elif got:
                        last_data = time.monotonic()
                elif fd == pipes.parent[0]:
                    if _feed(io_, fd, what):
                        poller.unregister(fd)
                        _close(io_, 0)
                elif fd == waker.rfd:
                    waker.drain()
                elif what & select.POLLNVAL:  # the context's fd: closed under us
                    raise ClosedError("the context was closed while communicate() waited")
                else:
                    ctx.dispatch()
            if ctx.closed and not child.done:
                raise ClosedError("the context was closed while communicate() waited")
        for target in reading.values():  # the linger is over: what is left is a grandchild's
            pipes.close(target)
    finally:
        child._remove_exit_waker(waker.poke)
        waker.close()
    out = io_.sinks.pop(1).take() if 1 in io_.sinks else None
    err = io_.sinks.pop(2).take() if 2 in io_.sinks else None
    return _decode(io_, out), _decode(io_, err)


def _feed(io_: ChildIO, fd: int, what: int) -> bool:
    """Write more input; True once all is written or the child closed its stdin."""
    view = io_.input
    if view is None or what & (select.POLLERR | select.POLLHUP):
        return True
    try:
        io_.input_at += os.write(fd, view[io_.input_at : io_.input_at + _CHUNK])
    except BlockingIOError:
        return False
    except BrokenPipeError:
        return True  # the child closed its stdin: not an error (as subprocess)
    return io_.input_at >= len(view)


def _timed_out(child: Child, io_: ChildIO, timeout: float | None) -> TimeoutExpired:
    out = io_.sinks[1].snapshot() if 1 in io_.sinks else None
    err = io_.sinks[2].snapshot() if 2 in io_.sinks else None
    return TimeoutExpired(command_of(child.args), timeout or 0.0, out, err, pid=child.pid)
