"""Capturing a pipe's output into ``bytes`` with no second full copy.

The obvious ways hold the output twice at the end: a list of chunks joined
(``b"".join``), or a ``bytearray`` turned into ``bytes``. A :class:`Sink` reads
with ``os.readv`` straight into the buffer of an ``io.BytesIO`` (through
``getbuffer()``), grows it by an eighth at a time, and hands its contents over
with ``getvalue()``, which in CPython returns the ``BytesIO``'s own ``bytes``
object, resized in place, when nothing else shares it (anyio's ``run_process``
relies on the same). Peak memory: the output plus an eighth (a small output: at most twice itself,
from 64 KiB).
Where CPython does not behave so, :meth:`take` costs one copy, nothing worse.
A pipe whose writer keeps it full is grown to 1 MiB (once), for fewer wake-ups.
"""

from __future__ import annotations

import fcntl
import io
import os

__all__ = ["Sink"]

_SMALL = 2 << 20  # below this the buffer doubles; above, it grows by an eighth
_GROW_MIN = 64 << 10  # bytes added to the buffer at least (a pipe's worth)
_BUDGET = 8 << 20  # bytes read per call at most (fairness between pipes)
_FULL_PIPE = 64 << 10  # a read this large found the pipe full: the writer outruns us
_BIG_PIPE = 1 << 20  # what such a pipe is grown to (the default /proc/sys/fs/pipe-max-size)


class Sink:
    """What one pipe delivered so far; :meth:`take` hands it over as ``bytes``."""

    __slots__ = ("_buf", "_cap", "_grown", "size")

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._cap = 0
        self._grown = False  # the pipe was made bigger (once)
        self.size = 0  # bytes captured

    def _grow(self) -> None:
        cap = self._cap + max(_GROW_MIN, self._cap if self._cap < _SMALL else self._cap // 8)
        self._buf.seek(cap - 1)
        self._buf.write(b"\0")
        self._cap = cap

    def read_from(self, fd: int) -> int | None:
        """Read what ``fd`` (non-blocking) has, up to a budget: the number of bytes
        read, 0 at EOF, None if nothing was there (``EAGAIN``)."""
        total = 0
        while total < _BUDGET:
            if self._cap - self.size < _GROW_MIN:
                self._grow()
            with self._buf.getbuffer() as view:
                try:
                    n = os.readv(fd, [view[self.size : self._cap]])
                except BlockingIOError:
                    return total or None
            if n == 0:
                return total
            self.size += n
            total += n
            if n >= _FULL_PIPE and not self._grown:
                # A writer that fills the pipe: a bigger one means fewer wake-ups and
                # reads. Only such pipes grow, so many small children do not eat the
                # per-user pipe quota (past it the kernel gives new pipes one page).
                self._grown = True
                try:
                    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _BIG_PIPE)
                except (OSError, AttributeError):
                    pass
        return total

    def write(self, data: bytes) -> None:
        """Add ``data`` (from a reader that does not read into the buffer itself)."""
        self._buf.seek(self.size)
        self._buf.write(data)
        self.size += len(data)
        self._cap = max(self._cap, self.size)

    def snapshot(self) -> bytes:
        """A copy of what was captured so far (for a timed-out call that may go on)."""
        with self._buf.getbuffer() as view:
            return bytes(view[: self.size])

    def take(self) -> bytes:
        """Everything captured, as ``bytes``; the sink is empty afterwards."""
        buf = self._buf
        buf.truncate(self.size)
        data = buf.getvalue()
        self._buf, self._cap, self.size = io.BytesIO(), 0, 0
        return data
