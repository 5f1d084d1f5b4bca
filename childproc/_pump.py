"""The framework-neutral half of talking to a child through its pipes.

A :class:`Pump` holds what one ``communicate()`` call does to a child's pipes:
feed stdin, read stdout and stderr into :class:`~childproc._sink.Sink` objects,
and, once the child's exit is known, stop by the rules of
:mod:`childproc._communicate` (EOF, or quiet for :data:`PIPE_QUIET_S`, or
:data:`PIPE_LINGER_S` after the exit). It does no waiting of its own: the
synchronous loop (``select.poll``) and the event-loop adapters (readers and
writers on their loop) tell it what is ready and when the exit came. Its state
lives on the child (:class:`~childproc._childio.ChildIO`), so a call a timeout or a
cancellation interrupted is carried on by the next, losing nothing.
"""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from ._childio import ChildIO, default_encoding
from ._errors import ArgumentTypeError, InvalidArgumentError
from ._held import Held, take_binary, take_text
from ._results import TimeoutExpired
from ._sink import Sink
from ._stdio import command_of

__all__ = ["PIPE_LINGER_S", "PIPE_QUIET_S", "Driver", "Pump", "Readiness"]

#: After the child's exit, stop reading a pipe that has been quiet this long (seconds).
PIPE_QUIET_S = 0.05
#: After the child's exit, stop reading its pipes this long after it at the latest.
PIPE_LINGER_S = 0.5

_CHUNK = 1 << 20  # bytes offered to the stdin pipe per write


def check_input(input: Any, text: bool) -> None:
    """Raise :class:`ArgumentTypeError` for an ``input`` that is not bytes-like (or a
    str in text mode)."""
    if isinstance(input, str):
        if not text:
            raise ArgumentTypeError("input is str: spawn with text=True, or give bytes")
    elif input is not None:
        try:
            memoryview(input).release()
        except TypeError:
            raise ArgumentTypeError(
                f"input must be bytes (or str with text=True), not {type(input).__name__}"
            ) from None


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
        if io_.started and input:
            raise InvalidArgumentError(
                "communicate() carries on where a timeout stopped it: give no new input"
            )
        if input is not None and pipes.parent[0] < 0 and not io_.started:
            raise InvalidArgumentError("communicate(input=...) needs the child spawned with stdin=PIPE")
        check_input(input, io_.text)
        if not io_.started:
            # What the application wrote through child.stdin goes first, while the pipe
            # still blocks (it may wait for the child to read, as Popen's does).
            io_.flush_stdin()
        for fd in pipes.parent:
            if fd >= 0:
                os.set_blocking(fd, False)  # (also again after a timeout, which left them blocking)
        if not io_.started:
            self._first(input)
        self.reading = {pipes.parent[t]: t for t in (1, 2) if pipes.parent[t] >= 0}

    def _first(self, input: Any) -> None:
        io_, pipes = self.io, self.pipes
        if isinstance(input, str):
            input = input.encode(io_.encoding or default_encoding(), io_.errors or "strict")
        for target in (1, 2):
            if pipes.parent[target] >= 0:
                io_.sinks[target] = sink = Sink()
                f = io_._files[target]
                if f is None or f.closed:
                    continue
                # What the application's reader took and has not returned comes first.
                if io_.text:
                    io_.held[target] = held = take_text(f)
                    sink.write(held.pending)
                else:
                    sink.write(take_binary(f))
        if pipes.parent[0] >= 0:
            if input:
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
        """``fd`` (a read end) is ready: read it. True at EOF: stop watching it, then
        :meth:`close_read` it."""
        got = self.io.sinks[self.reading[fd]].read_from(fd)
        if got == 0 or (got is None and hangup):
            return True
        if got:
            self.last_data = now
        return False

    def close_read(self, fd: int) -> None:
        self.pipes.close(self.reading.pop(fd))

    def writable(self, fd: int, error: bool) -> bool:
        """The stdin pipe is ready: write more. True once done (all written, or the
        child closed its end: not an error, as with ``subprocess``): stop watching
        it, then :meth:`close_stdin`."""
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
        self.io.output = (self._decode(out, 1), self._decode(err, 2))
        return self.io.output

    def _decode(self, data: bytes | None, target: int) -> Any:
        io_ = self.io
        if data is None or not io_.text:
            return data
        encoding, errors = io_.encoding or default_encoding(), io_.errors or "strict"
        held: Held | None = io_.held.pop(target, None)
        if held is None or held.state is None:
            text = ("" if held is None else held.text) + data.decode(encoding, errors)
        else:  # the rest decoded as the reader's decoder would have (a utf-16 byte order)
            decoder = codecs.getincrementaldecoder(encoding)(errors)
            decoder.setstate((b"", held.state))
            text = held.text + decoder.decode(data, final=True)  # (a \r held back may meet its \n)
        return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text

    def _held_bytes(self, target: int) -> bytes:
        """What the application's text reader held (see :mod:`childproc._held`), as
        bytes again, for a timeout's exception (``subprocess`` gives bytes there): its
        line ends already read as ``\\n``."""
        held: Held | None = self.io.held.get(target)
        if held is None or not held.text:
            return b""
        errors = "surrogateescape" if self.io.errors == "surrogateescape" else "replace"
        return held.text.encode(self.io.encoding or default_encoding(), errors)

    def blocking_again(self) -> None:
        """Leave the pipes blocking for the application's own reads, as ``subprocess``
        does (the synchronous call, after a timeout)."""
        for fd in self.pipes.parent:
            if fd >= 0:
                os.set_blocking(fd, True)

    def timed_out(self, timeout: float | None) -> TimeoutExpired:
        """The timeout's exception, carrying a copy of what was read so far."""
        sinks = self.io.sinks  # (None where nothing was read yet, as subprocess has it)
        out = (self._held_bytes(1) + sinks[1].snapshot() or None) if 1 in sinks else None
        err = (self._held_bytes(2) + sinks[2].snapshot() or None) if 2 in sinks else None
        return TimeoutExpired(command_of(self._args), timeout or 0.0, out, err, pid=self._pid)


class Readiness(Protocol):
    """What an event loop gives a :class:`Driver` (asyncio's loop has it as is)."""

    def add_reader(self, fd: int, callback: Callable[..., object], *args: Any) -> None: ...
    def remove_reader(self, fd: int) -> object: ...
    def add_writer(self, fd: int, callback: Callable[..., object], *args: Any) -> None: ...
    def remove_writer(self, fd: int) -> object: ...
    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable: ...


class Cancellable(Protocol):
    def cancel(self) -> object: ...


class Driver:
    """A :class:`Pump` driven by an event loop's callbacks: readers and writers on
    the pipes, the exit from ``exited()`` (call :meth:`poke` when it changes), the
    linger from a timer. ``done(None)`` once the output is complete, ``done(exc)``
    if reading or writing failed; then :meth:`stop` and :meth:`Pump.finish`."""

    def __init__(
        self,
        pump: Pump,
        loop: Readiness,
        exited: Callable[[], bool],
        done: Callable[[BaseException | None], None],
    ) -> None:
        self.pump, self.loop, self._exited, self._done = pump, loop, exited, done
        self.finished = False
        self._timer: Cancellable | None = None
        self._readers = list(pump.reading)
        self._writer = pump.stdin

    def start(self) -> None:
        for fd in self._readers:
            self.loop.add_reader(fd, self._step, self._read, fd)
        if self._writer is not None:
            self.loop.add_writer(self._writer, self._step, self._write, self._writer)
        self.poke()

    def stop(self) -> None:
        """Take every callback off the loop (idempotent)."""
        self.finished = True
        for fd in self._readers:
            if fd in self.pump.reading:
                self.loop.remove_reader(fd)
        self._readers = []
        if self._writer is not None and self.pump.stdin == self._writer:
            self.loop.remove_writer(self._writer)
        self._writer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def poke(self) -> None:
        """Look again: the exit may have come, the linger may be over."""
        self._step(_nothing, -1)

    def _step(self, what: Callable[[int], None], fd: int) -> None:
        if self.finished:
            return
        try:
            what(fd)
            self._check()
        except BaseException as exc:
            self.finished = True
            self._done(exc)

    def _read(self, fd: int) -> None:
        if fd in self.pump.reading and self.pump.readable(fd, False, time.monotonic()):
            self.loop.remove_reader(fd)  # (before the close: a loop may look the fd up)
            self.pump.close_read(fd)

    def _write(self, fd: int) -> None:
        if self.pump.stdin == fd and self.pump.writable(fd, False):
            self.loop.remove_writer(fd)
            self.pump.close_stdin()

    def _check(self) -> None:
        pump, now = self.pump, time.monotonic()
        if pump.exit_at is None and self._exited():
            if pump.stdin is not None:
                self.loop.remove_writer(pump.stdin)
            pump.exited(now)
        left = pump.linger(now)
        if left is None:
            return
        if left <= 0:
            self.finished = True
            self._done(None)
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(left, self.poke)


def _nothing(fd: int) -> None:
    pass
