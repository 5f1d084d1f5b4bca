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

import select
import time
from collections.abc import Callable
from typing import Any, Protocol

from ._childio import ChildIO
from ._errors import ClosedError, InvalidArgumentError, StateError
from ._pump import PIPE_LINGER_S, PIPE_QUIET_S, Pump
from ._results import TimeoutExpired
from ._stdio import command_of
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
    @property
    def returncode(self) -> int | None: ...
    def _add_exit_waker(self, poke: Callable[[], None]) -> None: ...
    def _remove_exit_waker(self, poke: Callable[[], None]) -> None: ...
    def _waits_for_report_here(self) -> bool: ...


__all__ = ["PIPE_LINGER_S", "PIPE_QUIET_S", "communicate"]  # (the constants: see _pump)

_TICK_S = 1.0  # the longest sleep: closing contexts and lost wake-ups are noticed by then


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
        # (checked holding the lock: another thread's call may have just returned)
        return io_.returned(input) or _communicate(child, io_, input, timeout)
    finally:
        if io_.closing:  # the context was closed meanwhile: close() left the pipes to us
            io_._close_all()
        io_.lock.release()


_HUP = select.POLLHUP | select.POLLERR


def _communicate(child: Child, io_: ChildIO, input: Any, timeout: float | None) -> tuple[Any, Any]:
    ctx = child._ctx
    if not child.done and child._waits_for_report_here():
        raise StateError(
            "communicate() waits for the child's exit, and in MAINLOOP this thread is the one "
            "that reports exits (childproc_reaped, sigchld_occurred): call it from another thread"
        )
    deadline = None if timeout is None else time.monotonic() + timeout
    pump = Pump(io_, child.args, child.pid)
    pump.start(input)
    report = ctx._report_watch(child, endless=deadline is None)  # (MAINLOOP: a report that never comes)
    waker = Waker()
    poller = select.poll()
    child._add_exit_waker(waker.poke)
    try:
        poller.register(waker.rfd, select.POLLIN)
        dispatch_fd = ctx._fd_to_dispatch()
        if dispatch_fd is not None:
            poller.register(dispatch_fd, select.POLLIN)
        for fd in pump.reading:
            poller.register(fd, select.POLLIN)
        stdin = pump.stdin
        if stdin is not None:
            poller.register(stdin, select.POLLOUT)
        while True:
            now = time.monotonic()
            if child.done and pump.exit_at is None:
                if pump.stdin is not None:
                    poller.unregister(pump.stdin)
                pump.exited(now)
            left = pump.linger(now)
            if left is not None and left <= 0:
                break
            wait_s = _TICK_S if left is None else left
            if deadline is not None:
                if now >= deadline:
                    pump.blocking_again()
                    raise pump.timed_out(timeout)
                wait_s = min(wait_s, deadline - now)
            ready = poller.poll(max(0.0, wait_s) * 1000)
            if not ready and dispatch_fd is not None and not child.done:
                ctx.dispatch()  # a quiet tick: dispatch's own checks (lost pidfds, the handler)
            if not ready and report is not None and not child.done:
                report.check()
            for fd, what in ready:
                if fd in pump.reading:
                    if pump.readable(fd, bool(what & _HUP), time.monotonic()):
                        poller.unregister(fd)
                        pump.close_read(fd)
                elif fd == pump.stdin:
                    if pump.writable(fd, bool(what & _HUP)):
                        poller.unregister(fd)
                        pump.close_stdin()
                elif fd == waker.rfd:
                    waker.drain()
                elif what & select.POLLNVAL:  # the context's fd: closed under us
                    raise ClosedError("the context was closed while communicate() waited")
                else:
                    ctx.dispatch()
            if (ctx.closed or io_.closing) and child.returncode is None:
                # (the close abandoned the child, or killed it without a delivery)
                raise ClosedError("the context was closed while communicate() waited")
    finally:
        child._remove_exit_waker(waker.poke)
        waker.close()
        # The write end goes with the waker's last reference: not this frame's, which
        # a TimeoutExpired kept by the application (its traceback) would keep alive.
        del waker
    return pump.finish()
