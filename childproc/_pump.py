"""The framework-neutral half of talking to a child through its pipes.

A :class:`Pump` holds what one ``communicate()`` call does to a child's pipes:
feed stdin, read stdout and stderr into :class:`~childproc._sink.Sink` objects,
and, once the child's exit is known, stop by the rules of
:mod:`childproc._communicate` (EOF, or quiet for :data:`PIPE_QUIET_S`, or
:data:`PIPE_LINGER_S` after the exit). It does no waiting of its own: the
synchronous loop (``select.poll``) and the event-loop adapters (readers and
writers on their loop) tell it what is ready and when the exit came. Its state
lives on the child (:class:`~childproc._stdio.ChildIO`), so a call a timeout or a
cancellation interrupted is carried on by the next, losing nothing.
"""

from __future__ import annotations

import os
from typing import Any

from ._errors import InvalidArgumentError
from ._results import TimeoutExpired
from ._sink import Sink
from ._stdio import ChildIO, command_of, default_encoding

__all__ = ["PIPE_LINGER_S", "PIPE_QUIET_S", "Pump"]

#: After the child's exit, stop reading a pipe that has been quiet this long (seconds).
PIPE_QUIET_S = 0.05
#: After the child's exit, stop reading its pipes this long after it at the latest.
PIPE_LINGER_S = 0.5

_CHUNK = 1 << 20  # bytes offered to the stdin pipe per write


class Pump:
    """One ``communicate()``'s work on a child's pipes (see the module docstring)."""

    def __init__(self, io_: ChildIO, args: Any, pid: int) -> None:
        assert io_.pipes is not None
        self.io = io_
        self.pipes = io_.pipes
        self._args, self._pid = args, pid
        #: Read ends still read: fd -> target (1, 2).
        self.reading: dict[int, int] = {}
        self.exit_at: float | None = None
        self.last_data = 0.0

    @property
    def stdin(self) -> int | None:
        """The stdin pipe while input is still to be written."""
        fd = self.pipes.parent[0]
        return fd if fd >= 0 else None

    def start(self, input: Any) -> None:
        """Set the pipes up (first call) or check a later call's arguments."""
        io_, pipes = self.io, self.pipes
        if io_.started:
            if input:
                raise InvalidArgumentError(
                    "communicate() carries on where a timeout stopped it: give no new input"
                )
        else:
            self._first(input)
        self.reading = {pipes.parent[t]: t for t in (1, 2) if pipes.parent[t] >= 0}

    def _first(self, input: Any) -> None:
        io_, pipes = self.io, self.pipes
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
                self.close_stdin()
        io_.started = True

    def close_stdin(self) -> None:
        f = self.io._files[0]
        if f is not None:
            try:
                f.close()  # (flushes: nothing is buffered once communicate started)
            except (BrokenPipeError, ValueError):
                pass
        self.pipes.close(0)

    def readable(self, fd: int, hangup: bool, now: float) -> bool:
        """``fd`` (a read end) is ready: read it. True once it is closed (EOF)."""
        got = self.io.sinks[self.reading[fd]].read_from(fd)
        if got == 0 or (got is None and hangup):
            self.pipes.close(self.reading.pop(fd))
            return True
        if got:
            self.last_data = now
        return False

    def writable(self, fd: int, error: bool) -> bool:
        """The stdin pipe is ready: write more. True once it is closed (all written,
        or the child closed its end: not an error, as with ``subprocess``)."""
        io_ = self.io
        view = io_.input
        if view is not None and not error:
            try:
                io_.input_at += os.write(fd, view[io_.input_at : io_.input_at + _CHUNK])
            except BlockingIOError:
                return False
            except BrokenPipeError:
                pass
            else:
                if io_.input_at < len(view):
                    return False
        self.close_stdin()
        return True

    def exited(self, now: float) -> None:
        """The child's exit was delivered: the rest of the input is for nobody."""
        if self.exit_at is None:
            self.exit_at = self.last_data = now
            if self.stdin is not None:
                self.close_stdin()

    def linger(self, now: float) -> float | None:
        """Seconds left to read after the exit (<= 0: done), None before the exit."""
        if self.exit_at is None:
            return None
        if not self.reading:
            return 0.0
        return min(self.last_data + PIPE_QUIET_S, self.exit_at + PIPE_LINGER_S) - now

    def finish(self) -> tuple[Any, Any]:
        """Close what is left to read (a descendant's) and hand the output over."""
        for target in list(self.reading.values()):
            self.pipes.close(target)
        self.reading.clear()
        sinks = self.io.sinks
        out = sinks.pop(1).take() if 1 in sinks else None
        err = sinks.pop(2).take() if 2 in sinks else None
        return self._decode(out), self._decode(err)

    def _decode(self, data: bytes | None) -> Any:
        io_ = self.io
        if data is None or not io_.text:
            return data
        text = data.decode(io_.encoding or default_encoding(), io_.errors or "strict")
        return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text

    def timed_out(self, timeout: float | None) -> TimeoutExpired:
        """The timeout's exception, carrying a copy of what was read so far."""
        sinks = self.io.sinks
        out = sinks[1].snapshot() if 1 in sinks else None
        err = sinks[2].snapshot() if 2 in sinks else None
        return TimeoutExpired(command_of(self._args), timeout or 0.0, out, err, pid=self._pid)
