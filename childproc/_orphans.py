"""The orphanage: reaps the children of closed or forgotten contexts, without callbacks.

A context closed (or collected) while its children still run must not leave
zombies behind, and must not let its pids be taken for a stranger's, so it
hands each such child (with its pidfd) to the process's one orphanage:

* a daemon thread, ``childproc-orphans``, alive only while there are orphans,
  waits on their pidfds (or, without pidfds, checks each by pid every 50 ms)
  and reaps each with ``waitid`` on exactly that child: it never touches a pid
  that is not an orphan;
* in the ``waitpid(-1)`` modes another context may reap an orphan first: it
  tells the orphanage (:meth:`Orphanage.accept_reaped`), which forgets it.

Orphans of MAINLOOP contexts are not taken: there the application reaps.
The table is changed with the process lock held.
"""

from __future__ import annotations

import os
import select
import sys
import threading

from . import _process
from ._fds import FdIdentity, close_if_ours, identify

__all__ = ["ORPHANAGE", "Orphanage"]

_TICK_S = 0.05


class Orphanage:
    """See the module docstring."""

    def __init__(self) -> None:
        self._orphans: dict[int, int | None] = {}  # pid -> its pidfd (the orphanage's to close) or None
        self._ids: dict[int, FdIdentity] = {}  # pid -> what its pidfd was when taken
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self._orphans)

    def claims(self, pid: int) -> bool:
        return pid in self._orphans

    def take(self, pid: int, pidfd: int | None) -> None:
        """Reap ``pid`` when it dies; ``pidfd`` (if any) is the orphanage's now. LOCK held."""
        if pidfd is not None and pid not in self._ids:
            self._ids[pid] = identify(pidfd, pid)
        self._orphans[pid] = pidfd
        if sys.is_finalizing():
            # A context left open until the interpreter exits: a thread started now
            # never runs (3.11's start() then waits for it forever; 3.12+ refuse).
            # The process is ending anyway: its children go to init, which reaps them.
            return
        thread = self._thread
        if thread is None or not thread.is_alive():
            thread = threading.Thread(target=self._run, name="childproc-orphans", daemon=True)
            self._thread = thread
            thread.start()

    def accept_reaped(self, pid: int, status: int, uid: int | None, rusage: object = None) -> None:
        """Someone in childproc reaped orphan ``pid`` (``waitpid(-1)``). LOCK held."""
        self._forget(pid)

    def _forget(self, pid: int) -> None:
        fd = self._orphans.get(pid)
        if fd is not None:
            close_if_ours(fd, self._ids.get(pid))
        self._orphans.pop(pid, None)
        self._ids.pop(pid, None)

    def _reap_ready(self) -> None:
        with _process.LOCK:
            for pid, fd in list(self._orphans.items()):
                try:
                    if fd is not None:
                        done = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG) is not None
                    else:
                        done = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG) is not None
                except ChildProcessError:
                    done = True  # someone reaped it already
                except OSError:  # its pidfd was closed under us: by pid (still unreaped)
                    self._orphans[pid] = None
                    self._ids.pop(pid, None)
                    continue
                if not done:
                    continue
                self._forget(pid)

    def _run(self) -> None:
        poller = select.poll()
        polled: set[int] = set()
        while True:
            self._reap_ready()
            with _process.LOCK:
                if not self._orphans:
                    if self._thread is threading.current_thread():
                        self._thread = None
                    return
                fds = set(fd for fd in self._orphans.values() if fd is not None)
                fdless = len(fds) < len(self._orphans)
            for fd in polled - fds:
                poller.unregister(fd)
            for fd in fds - polled:
                poller.register(fd, select.POLLIN)
            polled = fds
            try:
                poller.poll(_TICK_S * 1000 if fdless or not fds else 1000)
            except OSError:  # an fd closed meanwhile (reaped by another context)
                pass

    def forget_after_fork(self) -> None:
        """In a forked child: the orphans are the parent's."""
        for fd in self._orphans.values():
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._orphans.clear()
        self._ids.clear()
        self._thread = None


ORPHANAGE = Orphanage()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=ORPHANAGE.forget_after_fork)
