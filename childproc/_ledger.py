"""One context's bookkeeping: which children are outstanding, which events await delivery.

Rules of this file
------------------
* Pure: no OS calls, no locks, no threads. The caller holds the process lock
  (``_process.LOCK``) around every mutating call; this file does not know it.
* Exactly once is decided here, through the lifecycle table
  (:mod:`childproc._lifecycle`): every change of a child's state is made by a
  method of this class, which moves the child's ``phase`` with
  :func:`~childproc._lifecycle.advance` and queues the event that goes with it
  in one step. A child's exit (or loss) is queued exactly once, because only
  the move out of a living state queues it; the same news applied again (a
  journal entry replayed after an interruption) finds the child already moved
  and queues nothing.
* **Safe against an exception raised between any two bytecodes** (a
  ``KeyboardInterrupt`` from a signal handler). CPython runs signal handlers
  only at a function's entry, after a call returns and at a backward jump,
  never between two stores. So each method first computes (calls), then
  commits with plain stores followed by at most one C call (``deque.append``):
  interrupted, it has either changed nothing or committed. What follows a
  commit (removing a pid from ``running``) is bookkeeping that any later call
  redoes.
* Delivery: :meth:`Ledger.next_event` returns the oldest event not yet
  delivered; the caller marks it ``done`` (a store) immediately before calling
  its callback, and :meth:`Ledger.pop` / :meth:`next_event` drop done events.
  An event is delivered once its callback was called, whatever it then did.
* The ledger hands each event back with the child's record (the ``handle``);
  it reads and writes only the record's ``phase``.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from ._lifecycle import FINISHED, OUTSTANDING, Move, Phase, advance

__all__ = ["ChildCallback", "Event", "EventKind", "Ledger", "Tracked"]

#: ``callback(pid, status)`` as given to ``Context.child_fork``.
ChildCallback = Callable[[int, int], object]


class Tracked(Protocol):
    """A child's record, as the ledger sees it."""

    phase: Phase


H = TypeVar("H", bound=Tracked)


class EventKind(enum.Enum):
    CHILD_EXIT = "child exit"  # one of ours died: its last event
    CHILD_STATE = "child state"  # one of ours stopped or continued: still running
    FOREIGN = "foreign"  # made by nobody in childproc: to reaped_callback
    UNKNOWN = "unknown"  # made by nobody in childproc, no reaped_callback: a warning
    STOLEN = "stolen"  # one of ours, reaped by someone else: status lost


class Event(Generic[H]):
    __slots__ = ("done", "handle", "kind", "pid", "status", "uid")

    def __init__(self, kind: EventKind, pid: int, status: int, handle: H | None, uid: int | None = None):
        self.kind = kind
        self.pid = pid
        self.status = status  # wait status; -1 for STOLEN
        self.handle = handle  # the child's record; None for FOREIGN and UNKNOWN
        self.uid = uid  # the child's uid, where waitid told it
        self.done = False  # its callback was called

    def __repr__(self) -> str:
        return f"Event({self.kind.name}, pid={self.pid}, status={self.status:#x}, done={self.done})"


_EXIT_KINDS = (EventKind.CHILD_EXIT, EventKind.STOLEN)


class Ledger(Generic[H]):
    """Outstanding children and undelivered events of one context."""

    __slots__ = ("_last_news", "queue", "running")

    def __init__(self) -> None:
        #: Children whose death has not been seen: pid -> record. Read-only outside.
        self.running: dict[int, H] = {}
        #: Recorded events, oldest first; done ones are dropped lazily. Read-only outside.
        self.queue: deque[Event[H]] = deque()
        self._last_news: object = None  # the news applied last, so a replay is recognised

    # -- children -----------------------------------------------------------
    def add(self, pid: int, handle: H) -> None:
        """Record a new running child. Adding the same record again is a no-op;
        another record under a running pid is a bug upstream."""
        known = self.running.get(pid)
        if known is handle:
            return
        if known is not None:
            raise KeyError(f"pid {pid} is already a running child of this context")
        self.running[pid] = handle

    def is_running(self, pid: int) -> bool:
        return pid in self.running

    def handle(self, pid: int) -> H | None:
        """The record of running child ``pid``, or None."""
        return self.running.get(pid)

    def _move(self, handle: H, move: Move, event: Event[H] | None) -> bool:
        """Move ``handle`` and queue ``event`` in one commit; False (nothing queued)
        if the move changes nothing (a replay) or the child is finished."""
        old = handle.phase
        new = advance(old, move)
        if new is old:
            return False
        if event is None:
            handle.phase = new
        else:
            handle.phase = new
            self.queue.append(event)  # the commit: nothing runs between these two
        return True

    def exited(self, pid: int, status: int, uid: int | None = None) -> bool:
        """``pid`` was reaped with ``status``. False if it was not a running child
        or its exit was already recorded (a replay)."""
        return self._died(pid, status, uid, Move.REAP)

    def peeked(self, pid: int, status: int, uid: int | None = None) -> bool:
        """``pid``'s exit was seen with ``WNOWAIT``: it is a zombie, reaped after
        delivery. False if not a running child or already recorded."""
        return self._died(pid, status, uid, Move.PEEK)

    def _died(self, pid: int, status: int, uid: int | None, move: Move) -> bool:
        handle = self.running.get(pid)
        if handle is None:
            return False
        queued = handle.phase in (Phase.RUNNING, Phase.STOPPED) and self._move(
            handle, move, Event(EventKind.CHILD_EXIT, pid, status, handle, uid)
        )
        self.running.pop(pid, None)
        return queued

    def changed(
        self, pid: int, status: int, uid: int | None = None, news: object = None, report: bool = True
    ) -> bool:
        """``pid`` stopped or continued and stays running; an event is queued if
        ``report`` (the child asked for this kind). ``news``: the raw report, so
        that the same report applied twice queues one event. False if not a
        running child or a replay."""
        handle = self.running.get(pid)
        if handle is None or (news is not None and news is self._last_news):
            return False
        stopped = (status & 0xFF) == 0x7F
        new = advance(handle.phase, Move.STOP if stopped else Move.CONTINUE)
        if not report:
            handle.phase = new
            return True
        event = Event(EventKind.CHILD_STATE, pid, status, handle, uid)
        handle.phase = new
        self._last_news = news
        self.queue.append(event)  # the commit
        return True

    def stolen(self, pid: int) -> bool:
        """``pid`` was reaped by someone else (``ECHILD``). False if not a running
        child or already recorded."""
        handle = self.running.get(pid)
        if handle is None:
            return False
        queued = self._move(handle, Move.GONE, Event(EventKind.STOLEN, pid, -1, handle))
        self.running.pop(pid, None)
        return queued

    def forget(self, pid: int, move: Move = Move.RELEASE) -> bool:
        """Stop tracking running child ``pid`` with no event (released, or its
        context closing: ``Move.ABANDON``). False if it was not running."""
        handle = self.running.get(pid)
        if handle is None:
            return False
        self._move(handle, move, None)
        self.running.pop(pid, None)
        return True

    def foreign(
        self, pid: int, status: int, kind: EventKind, uid: int | None = None, news: object = None
    ) -> bool:
        """A pid nobody in childproc made was reaped by this context."""
        if kind not in (EventKind.FOREIGN, EventKind.UNKNOWN):
            raise ValueError(f"not a foreign event kind: {kind}")
        if news is not None and news is self._last_news:
            return False
        event: Event[H] = Event(kind, pid, status, None, uid)
        self._last_news = news
        self.queue.append(event)  # the commit
        return True

    def forget_running(self) -> list[int]:
        """Stop tracking every running child (context closing); return their pids."""
        pids = list(self.running)
        for pid in pids:
            self.forget(pid, Move.ABANDON)
        return pids

    def discard_queue(self) -> int:
        """Drop undelivered events (context closing); return how many were undelivered."""
        n = 0
        while self.queue:
            event = self.queue[0]
            if not event.done:
                event.done = True
                n += 1
                if event.handle is not None and event.kind in _EXIT_KINDS:
                    event.handle.phase = advance(event.handle.phase, Move.ABANDON)
            self.queue.popleft()
        return n

    # -- delivery -----------------------------------------------------------
    def next_event(self) -> Event[H] | None:
        """The oldest event not delivered yet (it stays queued until done), or None."""
        queue = self.queue
        while queue:
            event = queue[0]
            if not event.done:
                return event
            queue.popleft()
        return None

    def delivering(self, event: Event[H]) -> Phase | None:
        """The phase an exit event's child moves to when it is delivered (compute
        it before the commit), or None for other events."""
        if event.handle is None or event.kind not in _EXIT_KINDS or event.handle.phase in FINISHED:
            return None  # (a child released after its exit was queued: nothing to move)
        return advance(event.handle.phase, Move.DELIVER)

    def pop(self) -> Event[H] | None:
        """The next event, marked delivered and removed from the queue, or None."""
        event = self.next_event()
        if event is None:
            return None
        phase = self.delivering(event)
        event.done = True
        if phase is not None and event.handle is not None:
            event.handle.phase = phase
        self.queue.popleft()
        return event

    # -- views --------------------------------------------------------------
    @property
    def unreaped(self) -> int:
        return len(self.running)

    @property
    def has_events(self) -> bool:
        return self.next_event() is not None

    def running_pids(self) -> list[int]:
        return list(self.running)

    def running_handles(self) -> list[H]:
        return list(self.running.values())

    def outstanding(self) -> frozenset[int]:
        """Pids made by this context whose exit has not been delivered yet."""
        queued = (
            e.pid
            for e in self.queue
            if not e.done and e.kind in _EXIT_KINDS and e.handle is not None and e.handle.phase in OUTSTANDING
        )
        return frozenset(self.running).union(queued)

    @staticmethod
    def finished(handle: Tracked) -> bool:
        return handle.phase in FINISHED
