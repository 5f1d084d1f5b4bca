"""Watchers: how a context finds out which of its children died, and reaps them.

One interface, one module per mechanism, picked per mode by
:func:`childproc._policy.choose_watcher`:

``waitany.WaitAnyWatcher``
    ``waitid(P_ALL, WEXITED | WNOHANG)`` until nothing is left. Takes every
    child of the process, ours or not; the kernel walks the whole child list on
    each call. Used by LIBXL and LIBXL_ALWAYS.
``pidfd.PidfdWatcher``
    ``waitid(P_PIDFD, fd, WEXITED | WNOHANG)`` on exactly the children whose
    pidfd the context's epoll reported readable. Never touches a pid it did not
    make. O(ready children). Used by SELECTIVE_REAP where the kernel has pidfds,
    and by PIDFD.
``scan.ScanWatcher``
    ``waitid(P_PID, pid, WEXITED | WNOHANG)`` for every child the context made,
    on each SIGCHLD. Never touches a pid it did not make, but O(children) per
    signal: the fallback for SELECTIVE_REAP where pidfds are missing (libxl's
    own SELECTIVE_REAP strategy, and Twisted's, Tornado's and libuv's).
``none.NoWatcher``
    Reaps nothing: in MAINLOOP the application reaps and reports.

Stop and continue events never make a pidfd readable, so every watcher checks
the children that asked for them (``_watches_stops``) one by one when SIGCHLD
pokes the context: O(such children), whatever the watcher.

The contract every watcher keeps
--------------------------------
* **Who calls, from where.** Only a :class:`~childproc.Context`, with the
  process lock (``childproc._process.LOCK``) held, from any thread. Never from
  a signal handler. The watcher needs no lock of its own.
* **What it owns.** Nothing but its own sets of children. The context opens,
  registers and closes pidfds; a watcher only reads them, and reads a child
  through the :class:`Watched` attributes only (plain slots, never written
  here: they are read for every child, and after a ``fork()`` every object the
  parent touches costs it a page).
* :meth:`Watcher.add` is called once per child right after it was made (in the
  parent, before anyone can reap it), and again when its options change;
  :meth:`Watcher.remove` once when the child is gone, whoever reaped it.
* :meth:`Watcher.reap` never blocks. ``woken`` lists the children whose pidfd
  became readable; ``signalled`` says whether the context's self-pipe was
  poked (SIGCHLD, or another thread). It adds to the context's journal
  (:class:`Reaped`): children reaped (for ``WaitAnyWatcher`` possibly pids
  nobody made), exits peeked at and state changes seen without reaping, pids
  of ours someone else reaped (``ECHILD``) and pids whose pidfd someone else
  closed (``EBADF``). Every result of a reap reaches the journal from C, with
  no bytecode between the system call and the store (``deque.extend(map(
  os.waitid, ...))``): a ``KeyboardInterrupt`` can land before a reap or after
  its result is safe, never in between. ``EINTR`` is retried (PEP 475); any
  other ``OSError`` propagates.
"""

from __future__ import annotations

from .._policy import WatcherKind
from ._base import Reaped, Watched, Watcher
from .none import NoWatcher
from .pidfd import PidfdWatcher
from .scan import ScanWatcher
from .waitany import WaitAnyWatcher

__all__ = ["Reaped", "Watched", "Watcher", "make_watcher"]

_WATCHERS: dict[WatcherKind, type[Watcher]] = {
    WatcherKind.WAIT_ANY: WaitAnyWatcher,
    WatcherKind.PIDFD: PidfdWatcher,
    WatcherKind.SCAN: ScanWatcher,
    WatcherKind.NONE: NoWatcher,
}


def make_watcher(kind: WatcherKind) -> Watcher:
    """A new watcher of ``kind``."""
    return _WATCHERS[kind]()
