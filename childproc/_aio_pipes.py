"""asyncio streams over a child's pipes: ``StreamReader``/``StreamWriter`` without a coroutine.

asyncio makes pipe streams with ``loop.connect_read_pipe``/``connect_write_pipe``,
coroutines that cannot run inside ``AsyncContext.spawn`` (synchronous) or a
property, and whose transports own their fds. These transports are built at
once, on any loop (uvloop too: they use only ``add_reader``/``add_writer``), and
close their pipe end through the child's :class:`~childproc._stdio.Pipes`
record, which stays the one owner of every fd.
"""

from __future__ import annotations

import asyncio
import os
from asyncio.streams import FlowControlMixin
from typing import Any

from ._stdio import Pipes

__all__ = ["reader_for", "writer_for"]

_READ_SIZE = 256 << 10
_HIGH_WATER = 64 << 10


class _ReadTransport(asyncio.ReadTransport):
    def __init__(
        self, loop: asyncio.AbstractEventLoop, pipes: Pipes, target: int, reader: asyncio.StreamReader
    ):
        super().__init__()
        self._loop, self._pipes, self._target, self._reader = loop, pipes, target, reader
        self._fd = pipes.parent[target]
        os.set_blocking(self._fd, False)
        self._reading = False
        self._closed = False
        pipes.hooks[target] = self._forget  # closed by someone else (the context): stop first
        self.resume_reading()

    def _forget(self) -> None:
        self.pause_reading()
        if not self._closed:
            self._closed = True
            self._reader.feed_eof()

    def _ready(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._reader.set_exception(exc)
            self.close()
            return
        if data:
            self._reader.feed_data(data)
        else:
            self._reader.feed_eof()
            self.close()

    def pause_reading(self) -> None:
        if self._reading and not self._closed:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def resume_reading(self) -> None:
        if not self._reading and not self._closed:
            self._loop.add_reader(self._fd, self._ready)
            self._reading = True

    def is_reading(self) -> bool:
        return self._reading

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self.pause_reading()
        self._closed = True
        self._pipes.close(self._target)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"pipe": self._fd}.get(name, default)


class _WriteProtocol(FlowControlMixin):
    """Flow control for :class:`asyncio.StreamWriter` (``drain``), and the future
    ``wait_closed`` awaits."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._closed_future: asyncio.Future[None] = loop.create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self._closed_future.done():
            self._closed_future.set_result(None)

    def _get_close_waiter(self, stream: object) -> asyncio.Future[None]:
        return self._closed_future


class _WriteTransport(asyncio.WriteTransport):
    def __init__(self, loop: asyncio.AbstractEventLoop, pipes: Pipes, protocol: _WriteProtocol) -> None:
        super().__init__()
        self._loop, self._pipes, self._protocol = loop, pipes, protocol
        self._fd = pipes.parent[0]
        os.set_blocking(self._fd, False)
        self._buffer = bytearray()
        self._closing = False
        self._closed = False
        self._paused = False
        pipes.hooks[0] = self._forget  # closed by someone else (the context): stop first

    def _forget(self) -> None:
        if self._buffer:
            self._loop.remove_writer(self._fd)
            self._buffer.clear()
        if not self._closed:
            self._closed = self._closing = True
            self._protocol.connection_lost(None)

    def write(self, data: Any) -> None:
        if self._closing or not data:
            return
        if not self._buffer:
            try:
                n = os.write(self._fd, data)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self._lost(exc)
                return
            data = memoryview(data)[n:]
            if not data:
                return
            self._loop.add_writer(self._fd, self._writable)
        self._buffer += data
        if len(self._buffer) > _HIGH_WATER and not self._paused:
            self._paused = True
            self._protocol.pause_writing()

    def _writable(self) -> None:
        try:
            n = os.write(self._fd, self._buffer)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(exc)
            return
        del self._buffer[:n]
        if self._paused and len(self._buffer) <= _HIGH_WATER // 4:
            self._paused = False
            self._protocol.resume_writing()
        if not self._buffer:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._lost(None)

    def _lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = self._closing = True
        if self._buffer:
            self._loop.remove_writer(self._fd)
            self._buffer.clear()
        self._pipes.close(0)
        self._protocol.connection_lost(exc)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.close()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not self._buffer:
            self._loop.call_soon(self._lost, None)

    def abort(self) -> None:
        self._lost(None)

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"pipe": self._fd}.get(name, default)


def reader_for(
    loop: asyncio.AbstractEventLoop, pipes: Pipes, target: int, limit: int
) -> asyncio.StreamReader:
    """A ``StreamReader`` fed from ``target``'s read end (1 or 2), with buffer ``limit``."""
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    reader.set_transport(_ReadTransport(loop, pipes, target, reader))
    return reader


def writer_for(loop: asyncio.AbstractEventLoop, pipes: Pipes) -> asyncio.StreamWriter:
    """A ``StreamWriter`` onto the stdin pipe; ``close()`` sends EOF once written."""
    protocol = _WriteProtocol(loop)
    transport = _WriteTransport(loop, pipes, protocol)
    return asyncio.StreamWriter(transport, protocol, None, loop)
