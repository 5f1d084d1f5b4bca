"""A context's self-pipe: what the SIGCHLD handler, other threads and other contexts poke.

The write end lives exactly as long as the waker: a poke (from the SIGCHLD handler,
a peek thread, another context) holds a reference to the waker, so the fd it writes
cannot be closed, or its number reused, under it. The fd is owned by an object whose
finaliser is C code (an ``epoll`` object wrapping it with ``select.epoll.fromfd``:
it only ever closes its fd), so no Python runs when the last reference goes, and no
interrupt can be lost or leave the fd open there. Nothing here takes a lock: a poke
may come from a signal handler. The read end is closed by :meth:`Waker.close`
(identity-checked, safe to repeat).
"""

from __future__ import annotations

import os
import select

from ._fds import above_stdio, close_if_ours, identify

__all__ = ["CLOSED_WAKER", "Waker"]


class Waker:
    """A context's self-pipe: non-blocking, close-on-exec, a boolean "look at me"."""

    __slots__ = ("_rid", "_wfd_owner", "rfd", "wfd")

    def __init__(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.rfd, self.wfd = above_stdio(rfd), above_stdio(wfd)  # never at 0-2: see _fds
        self._rid = identify(self.rfd)
        self._wfd_owner = select.epoll.fromfd(self.wfd)  # closes the write end when the waker goes

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
            except OSError:  # EAGAIN: empty
                return got
            if not data:
                return got
            got = True
            if len(data) < 512:
                return got

    def close(self) -> None:
        """Close the read end (idempotent, safe to repeat after an interruption); the
        write end closes with the waker's last reference."""
        if self.rfd >= 0:
            close_if_ours(self.rfd, self._rid)
            self.rfd = -1

    def forget(self) -> None:
        """In a forked child: close both ends now (the parent's pipe)."""
        self.close()
        self._wfd_owner.close()
        self.wfd = -1


class _ClosedWaker(Waker):
    """Stands in for a closed context's waker: no fds, pokes do nothing."""

    def __init__(self) -> None:
        self.rfd = self.wfd = -1

    def poke(self) -> None:
        pass

    def close(self) -> None:
        pass

    def forget(self) -> None:
        pass


CLOSED_WAKER = _ClosedWaker()
