"""Delivery: run each recorded event's callback exactly once, in order, never under the process lock.

Rules of this file
------------------
* One thread delivers a context's events at a time (the delivery lock, an
  ``RLock``: a callback may call back into the context, and a nested
  delivery goes on with the next event).
* An event is delivered once its callback was called. The event is marked
  ``done`` (with its child's move to ``DELIVERED``) by plain stores directly
  before the call, with nothing between that CPython would interrupt for a
  signal handler: a ``KeyboardInterrupt`` lands either before (the event stays
  queued for the next delivery) or inside the callback (it was delivered, and
  raised). A callback that raises propagates after the event was marked.
* A child whose exit was only peeked at (``reap_after_callback``) is reaped
  right after its callback, even if that raised, and at the next delivery if
  an interruption came in between.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _process
from ._errors import ChildStolenError
from ._ledger import Event, EventKind, Ledger
from ._lifecycle import Phase
from ._status import ChildEvent, describe_status
from ._subreaper import SUBREAPER
from ._traps import TRAPS

if TYPE_CHECKING:
    from ._child import Child

__all__ = ["Delivery"]

log = logging.getLogger("childproc")


def _nothing(*args: object) -> None:
    return None


class Delivery:
    """A context's delivery of its ledger's events (see the module docstring)."""

    def __init__(
        self,
        ledger: Ledger[Child],
        *,
        reaped_callback: Callable[[int, int], bool | None] | None,
        reap_zombie: Callable[[Child], None],
        reap_leftovers: Callable[[], None],
        lost_why: dict[int, str],
        mode_name: Callable[[], str],
        poke: Callable[[], None],
    ) -> None:
        self._ledger = ledger
        self._lock = threading.RLock()
        self.reaped_callback = reaped_callback
        self._reap_zombie = reap_zombie
        self._reap_leftovers = reap_leftovers
        self._lost_why = lost_why  # pid -> why its status is lost, where not "stolen"
        self._mode_name = mode_name
        self._poke = poke  # keeps fileno() readable while events stay queued
        #: The exception the last raising callback raised.
        self.raised: BaseException | None = None

    def delivering_here(self) -> bool:
        """This thread is in :meth:`deliver` (maybe in a callback)."""
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]

    def deliver(self, closed: Callable[[], bool]) -> int:
        """Deliver every queued event (until one raises); return how many were delivered."""
        delivered = 0
        ledger = self._ledger
        with self._lock:
            self._reap_leftovers()  # (zombies an interruption left unreaped after delivery)
            while True:
                if closed():
                    break
                with _process.LOCK:
                    event = ledger.next_event()
                    if event is None:
                        break
                    child = event.handle
                    before = None if child is None else child.phase
                    phase = ledger.delivering(event)
                    call, args = self._call_for(event)
                # The commit and the call: comparisons and stores, then the call, nothing
                # between where CPython would run a signal handler or switch threads.
                if child is not None and child.phase is not before:  # released meanwhile
                    call, args, phase = _nothing, (), None
                event.done = True
                if phase is not None and child is not None:
                    child.phase = phase
                try:
                    call(*args)
                except BaseException as exc:
                    self.raised = exc  # (a callback's own exception, for the dispatch thread's log)
                    with _process.LOCK:
                        more = ledger.next_event() is not None
                    if more and not closed():
                        self._poke()
                    raise
                finally:
                    delivered += 1
                    if child is not None:
                        if phase is Phase.REAP_DUE:
                            self._reap_zombie(child)
                        for poke in child._exit_wakers:  # a communicate() waiting on this child
                            poke()
        return delivered

    def _call_for(self, event: Event[Child]) -> tuple[Callable[..., object], tuple[Any, ...]]:
        """What delivering ``event`` calls (computed before the commit). LOCK held."""
        child = event.handle
        kind = event.kind
        if kind is EventKind.CHILD_EXIT or kind is EventKind.CHILD_STATE:
            assert child is not None
            if child.phase is Phase.RELEASED or child.phase is Phase.ORPHANED:
                return _nothing, ()
            if child._on_exit_status is not None:
                if kind is EventKind.CHILD_STATE:
                    return _nothing, ()
                return child._on_exit_status, (event.pid, event.status)
            if child._on_event is None:
                return _nothing, ()
            final = child.final if kind is EventKind.CHILD_EXIT else None
            if final is None:
                final = ChildEvent.from_wait_status(event.pid, event.status, event.uid)
            return child._on_event, (child, final)
        if kind is EventKind.FOREIGN:
            return self._foreign, (event,)
        if kind is EventKind.UNKNOWN:
            return self._warn_unknown, (event,)
        why = self._lost_why.pop(event.pid, None) or TRAPS["status-stolen"].error(
            TRAPS["status-stolen"].effects, pid=event.pid, mode=self._mode_name()
        )
        return _raise_stolen, (why, event.pid)

    def _foreign(self, event: Event[Child]) -> None:
        cb = self.reaped_callback
        known = cb(event.pid, event.status) if cb is not None else False
        if known is False:
            self._warn_unknown(event)

    def _warn_unknown(self, event: Event[Child]) -> None:
        log.warning(
            "unknown child [%d] %s (reaped by childproc in %s mode%s)",
            event.pid,
            describe_status(event.status),
            self._mode_name(),
            "; this process is a subreaper for process-group trees: it may be an orphan of one"
            if SUBREAPER.brings_back
            else "",
        )


def _raise_stolen(why: str, pid: int) -> None:
    raise ChildStolenError(why, pid)
