"""One context's bookkeeping: which children run, which events await delivery.

Rules of this file
------------------
* Pure: no OS calls, no locks, no threads. The caller holds the process lock
  (``_process.LOCK``) around every mutating call; this file does not know it.
* Exactly once is decided here. A child enters with :meth:`Ledger.add`, leaves
  ``running`` exactly once (:meth:`exited`, :meth:`stolen` or :meth:`forget`),
  and each of its events is handed out exactly once by :meth:`pop`. An event
  popped is delivered, whatever its callback then does; an event not yet popped
  stays queued.
* Events are handed out in the order they were recorded.
* The ledger keeps an opaque handle per child (the context's child record) and
  hands it back with the child's events; it never looks inside it.
* ``running`` (pid -> handle) and ``queue`` (the undelivered events) may be
  read directly, as the context does on every child's path; they are changed
  only through the methods here.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["ChildCallback", "Event", "EventKind", "Ledger"]

#: ``callback(pid, status)`` as given to ``Context.child_fork``.
ChildCallback = Callable[[int, int], object]

H = TypeVar("H")


class EventKind(enum.Enum):
    CHILD_EXIT = "child exit"  # one of ours died: its last event
    CHILD_STATE = "child state"  # one of ours stopped or continued: still running
    FOREIGN = "foreign"  # made by nobody in childproc: to reaped_callback
    UNKNOWN = "unknown"  # made by nobody in childproc, no reaped_callback: a warning
    STOLEN = "stolen"  # one of ours, reaped by someone else: status lost


_CHILD_EXIT = EventKind.CHILD_EXIT


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a call per field
class Event(Generic[H]):
    kind: EventKind
    pid: int
    status: int  # wait status; -1 for STOLEN
    callback: H | None  # the child's handle; None for FOREIGN, UNKNOWN and STOLEN
    uid: int | None = None  # the child's uid, where waitid told it


class Ledger(Generic[H]):
    """Running children and undelivered events of one context."""

    __slots__ = ("queue", "running")

    def __init__(self) -> None:
        #: Running children: pid -> handle. Read-only outside this class.
        self.running: dict[int, H] = {}
        #: Recorded events not yet popped, oldest first. Read-only outside this class.
        self.queue: deque[Event[H]] = deque()

    # -- children -----------------------------------------------------------
    def add(self, pid: int, callback: H) -> None:
        """Record a new running child. A pid already running is a bug upstream."""
        if pid in self.running:
            raise KeyError(f"pid {pid} is already a running child of this context")
        self.running[pid] = callback

    def is_running(self, pid: int) -> bool:
        return pid in self.running

    def handle(self, pid: int) -> H | None:
        """The handle of running child ``pid``, or None."""
        return self.running.get(pid)

    def exited(self, pid: int, status: int, uid: int | None = None) -> bool:
        """``pid`` died with ``status``. False if it is not a running child."""
        if pid not in self.running:
            return False
        callback = self.running.pop(pid)
        self.queue.append(Event(_CHILD_EXIT, pid, status, callback, uid))
        return True

    def changed(self, pid: int, status: int, uid: int | None = None) -> bool:
        """``pid`` stopped or continued and stays running. False if not a running child."""
        if pid not in self.running:
            return False
        self.queue.append(Event(EventKind.CHILD_STATE, pid, status, self.running[pid], uid))
        return True

    def stolen(self, pid: int) -> bool:
        """``pid`` was reaped by someone else. False if it is not a running child."""
        if pid not in self.running:
            return False
        del self.running[pid]
        self.queue.append(Event(EventKind.STOLEN, pid, -1, None))
        return True

    def forget(self, pid: int) -> bool:
        """Stop tracking running child ``pid``, with no event (its owner released it)."""
        if pid not in self.running:
            return False
        del self.running[pid]
        return True

    def foreign(self, pid: int, status: int, kind: EventKind, uid: int | None = None) -> None:
        """A pid nobody in childproc made was reaped by this context."""
        if kind not in (EventKind.FOREIGN, EventKind.UNKNOWN):
            raise ValueError(f"not a foreign event kind: {kind}")
        self.queue.append(Event(kind, pid, status, None, uid))

    def forget_running(self) -> list[int]:
        """Stop tracking every running child (context closing); return their pids."""
        pids = list(self.running)
        self.running.clear()
        return pids

    def discard_queue(self) -> int:
        """Drop undelivered events (context closing); return how many."""
        n = len(self.queue)
        self.queue.clear()
        return n

    # -- delivery -----------------------------------------------------------
    def pop(self) -> Event[H] | None:
        """The next event to deliver, removed from the queue, or None."""
        return self.queue.popleft() if self.queue else None

    # -- views --------------------------------------------------------------
    @property
    def unreaped(self) -> int:
        return len(self.running)

    @property
    def has_events(self) -> bool:
        return bool(self.queue)

    def running_pids(self) -> list[int]:
        return list(self.running)

    def running_handles(self) -> list[H]:
        return list(self.running.values())

    def outstanding(self) -> frozenset[int]:
        """Pids made by this context whose exit has not been delivered yet."""
        queued = (e.pid for e in self.queue if e.kind in (EventKind.CHILD_EXIT, EventKind.STOLEN))
        return frozenset(self.running).union(queued)
