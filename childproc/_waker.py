"""A context's self-pipe: what the SIGCHLD handler, other threads and other contexts poke."""

from __future__ import annotations

import os
import threading

from ._fds import above_stdio, close_if_ours, identify

__all__ = ["CLOSED_WAKER", "Waker"]


class Waker:
    """A context's self-pipe: non-blocking, close-on-exec, a boolean "look at me".

    Both ends are closed explicitly by :meth:`close` (there is no ``__del__``: a
    finaliser is Python code, where an interrupt would be swallowed). A poke
    never writes to a closed or reused number: it holds the waker's lock, and
    gives up when ``close`` has it (a poke during close has nothing to wake).
    Each close is safe to repeat after an interruption (the fd's identity is
    checked first).
    """

    __slots__ = ("_ids", "_lock", "rfd", "wfd")

    def __init__(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.rfd, self.wfd = above_stdio(rfd), above_stdio(wfd)  # never at 0-2: see _fds
        self._ids = {self.rfd: identify(self.rfd), self.wfd: identify(self.wfd)}
        self._lock = threading.Lock()

    def poke(self) -> None:
        # Non-blocking: the SIGCHLD handler may run while this thread is in close().
        if not self._lock.acquire(False):
            return
        try:
            if self.wfd >= 0:
                os.write(self.wfd, b"\0")
        except OSError:
            pass  # EAGAIN: already readable, which is all a poke means
        finally:
            self._lock.release()

    def drain(self) -> bool:
        got = False
        while True:
            try:
                data = os.read(self.rfd, 512)
            except OSError:  # EAGAIN: empty
                return got
            if not data:
                return got
            got = True
            if len(data) < 512:
                return got

    def close(self) -> None:
        """Close both ends (idempotent, safe to repeat after an interruption)."""
        with self._lock:
            for name in ("rfd", "wfd"):
                fd = getattr(self, name)
                if fd >= 0:
                    close_if_ours(fd, self._ids.get(fd))
                    setattr(self, name, -1)

    def forget(self) -> None:
        """In a forked child: the fds are the parent's pipe; close ours without checks."""
        for fd in (self.rfd, self.wfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.rfd = self.wfd = -1


class _ClosedWaker(Waker):
    """Stands in for a closed context's waker: no fds, pokes do nothing."""

    def __init__(self) -> None:
        self.rfd = self.wfd = -1
        self._ids = {}
        self._lock = threading.Lock()

    def poke(self) -> None:
        pass


CLOSED_WAKER = _ClosedWaker()
