"""A context's self-pipe: what the SIGCHLD handler, other threads and other contexts poke."""

from __future__ import annotations

import os

from ._fds import above_stdio

__all__ = ["CLOSED_WAKER", "Waker"]


class Waker:
    """A context's self-pipe: non-blocking, close-on-exec, a boolean "look at me".

    The write end is closed when the last reference goes (the SIGCHLD handler
    holds one while it pokes), so a poke can never hit a recycled fd number.
    """

    __slots__ = ("rfd", "wfd")

    def __init__(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.rfd, self.wfd = above_stdio(rfd), above_stdio(wfd)  # never at 0-2: see _fds

    def poke(self) -> None:
        try:
            os.write(self.wfd, b"\0")
        except OSError:
            pass  # EAGAIN: already readable, which is all a poke means

    def drain(self) -> bool:
        got = False
        while True:
            try:
                data = os.read(self.rfd, 512)
            except BlockingIOError:
                return got
            except OSError:
                return got
            if not data:
                return got
            got = True
            if len(data) < 512:
                return got

    def close_read(self) -> None:
        if self.rfd >= 0:
            os.close(self.rfd)
            self.rfd = -1

    def close_write(self) -> None:
        if self.wfd >= 0:
            os.close(self.wfd)
            self.wfd = -1

    def __del__(self) -> None:
        try:
            self.close_read()
            self.close_write()
        except OSError:  # pragma: no cover
            pass


class _ClosedWaker(Waker):
    """Stands in for a closed context's waker: no fds, pokes do nothing."""

    def __init__(self) -> None:
        self.rfd = self.wfd = -1

    def poke(self) -> None:
        pass


CLOSED_WAKER = _ClosedWaker()
