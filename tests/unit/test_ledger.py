"""Exactly-once bookkeeping of :class:`childproc._ledger.Ledger`, replays included."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from childproc._ledger import Event, EventKind, Ledger, Tracked
from childproc._lifecycle import FINISHED, OUTSTANDING, IllegalMove, Move, Phase, advance

if TYPE_CHECKING:
    from childproc._child import Child as ChildRecord

    def _the_real_record_is_tracked(ledger: Ledger[ChildRecord]) -> Ledger[ChildRecord]:
        return ledger  # mypy checks Child against the Tracked bound


class Callback:
    """A distinct handle per child, so an event can be traced back to the child; callable
    as a ``child_fork`` callback, and carrying the phase the ledger moves."""

    def __init__(self, serial: int) -> None:
        self.serial = serial
        self.phase = Phase.RUNNING
        self.calls: list[tuple[int, int]] = []

    def __call__(self, pid: int, status: int) -> None:
        self.calls.append((pid, status))

    def __repr__(self) -> str:
        return f"Callback({self.serial}, {self.phase.name})"


def phase_of(record: Tracked) -> Phase:
    """``record.phase``, read afresh (mypy would keep an earlier assert's narrowing)."""
    return record.phase


def cb(serial: int = 0) -> Callback:
    return Callback(serial)


def new_ledger() -> Ledger[Callback]:
    return Ledger[Callback]()


STOP = (19 << 8) | 0x7F  # stopped by SIGSTOP
CONT = 0xFFFF  # continued

EventFields = tuple[EventKind, int, int, object, "int | None"]


def fields(event: Event[Any] | None) -> EventFields | None:
    """What an event says (Event has no __eq__: it is compared by identity)."""
    if event is None:
        return None
    return (event.kind, event.pid, event.status, event.handle, event.uid)


def ev(kind: EventKind, pid: int, status: int, handle: object, uid: int | None = None) -> EventFields:
    return (kind, pid, status, handle, uid)


def pops(ledger: Ledger[Any], n: int) -> list[EventFields | None]:
    return [fields(ledger.pop()) for _ in range(n)]


H = TypeVar("H")


class InterruptingDict(dict[int, H], Generic[H]):
    """``Ledger.running`` that raises KeyboardInterrupt from the next ``pop`` once armed:
    a signal arriving right after a commit, before the bookkeeping that follows it."""

    armed = False

    def pop(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        return super().pop(*args, **kwargs)


def interruptible() -> tuple[Ledger[Callback], InterruptingDict[Callback]]:
    ledger = new_ledger()
    running: InterruptingDict[Callback] = InterruptingDict()
    ledger.running = running
    return ledger, running


# -- plain tests ---------------------------------------------------------------


def test_new_ledger_is_empty() -> None:
    ledger = new_ledger()
    assert ledger.unreaped == 0
    assert not ledger.has_events
    assert ledger.pop() is None
    assert ledger.next_event() is None
    assert ledger.running_pids() == []
    assert ledger.running_handles() == []
    assert ledger.handle(1) is None
    assert ledger.outstanding() == frozenset()


class Odd:
    """A handle that is falsy and equal to everything: the ledger must go by identity
    and read nothing but ``phase``."""

    __slots__ = ("phase",)

    def __init__(self) -> None:
        self.phase = Phase.RUNNING

    def __bool__(self) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


def test_handles_are_opaque_but_for_their_phase() -> None:
    ledger = Ledger[Odd]()
    a, b, c = Odd(), Odd(), Odd()
    ledger.add(1, a)
    ledger.add(2, b)
    ledger.add(3, c)
    assert ledger.handle(2) is b
    assert [id(h) for h in ledger.running_handles()] == [id(a), id(b), id(c)]
    ledger.add(2, b)  # the same record again: a no-op, even though a == b
    with pytest.raises(KeyError):
        ledger.add(2, a)  # another record, equal or not
    assert ledger.exited(3, 0)
    assert phase_of(c) is Phase.EXITED
    assert ledger.changed(2, STOP)
    assert phase_of(b) is Phase.STOPPED
    assert phase_of(a) is Phase.RUNNING
    first, second = ledger.pop(), ledger.pop()
    assert first is not None
    assert second is not None
    assert first.handle is c
    assert second.handle is b
    assert phase_of(c) is Phase.DELIVERED


def test_the_handle_is_the_callback() -> None:
    # Context.child_fork's callback(pid, status) travels as (part of) the handle.
    ledger = new_ledger()
    callback = cb()
    ledger.add(4, callback)
    assert ledger.exited(4, 2 << 8)
    event = ledger.pop()
    assert event is not None
    assert event.handle is callback
    event.handle(event.pid, event.status)
    assert callback.calls == [(4, 2 << 8)]


def test_tracked_is_a_protocol_on_phase() -> None:
    assert phase_of(cb()) is Phase.RUNNING  # a Callback is a Tracked (checked by mypy)
    assert Ledger.finished(cb()) is False


def test_add_twice_raises_keyerror() -> None:
    ledger = new_ledger()
    first = cb(1)
    ledger.add(10, first)
    with pytest.raises(KeyError):
        ledger.add(10, cb(2))
    # The failed add changed nothing: the first callback still gets the exit.
    assert ledger.unreaped == 1
    assert ledger.handle(10) is first
    assert ledger.exited(10, 0)
    event = ledger.pop()
    assert event is not None
    assert event.handle is first


def test_adding_the_same_record_again_is_a_no_op() -> None:
    ledger = new_ledger()
    first = cb(1)
    ledger.add(10, first)
    assert ledger.changed(10, STOP)
    ledger.add(10, first)  # a replayed registration
    assert ledger.running_handles() == [first]
    assert phase_of(first) is Phase.STOPPED  # not reset
    assert ledger.exited(10, 0)
    assert pops(ledger, 3) == [
        ev(EventKind.CHILD_STATE, 10, STOP, first),
        ev(EventKind.CHILD_EXIT, 10, 0, first),
        None,
    ]


def test_handle_follows_the_running_child() -> None:
    ledger = new_ledger()
    first = cb(1)
    assert ledger.handle(10) is None
    ledger.add(10, first)
    assert ledger.handle(10) is first
    assert ledger.handle(11) is None
    assert ledger.changed(10, STOP)
    assert ledger.handle(10) is first  # still running
    assert ledger.exited(10, 0)
    assert ledger.handle(10) is None  # gone, though its event is still queued
    assert ledger.has_events


def test_exited_records_a_child_exit_event() -> None:
    ledger = new_ledger()
    callback = cb()
    ledger.add(10, callback)
    assert ledger.is_running(10)
    assert ledger.exited(10, 3 << 8)
    assert phase_of(callback) is Phase.EXITED
    assert not ledger.is_running(10)
    assert ledger.unreaped == 0
    assert ledger.has_events
    assert ledger.outstanding() == frozenset({10})
    event = ledger.pop()
    assert fields(event) == ev(EventKind.CHILD_EXIT, 10, 3 << 8, callback)
    assert event is not None
    assert event.done
    assert phase_of(callback) is Phase.DELIVERED
    assert Ledger.finished(callback)
    assert ledger.pop() is None
    assert not ledger.has_events
    assert ledger.outstanding() == frozenset()


def test_event_defaults() -> None:
    event = Event[Callback](EventKind.CHILD_EXIT, 1, 0, None)
    assert event.uid is None
    assert event.done is False
    assert event.handle is None


def test_event_is_slotted() -> None:
    event = Event[Callback](EventKind.CHILD_STATE, 1, STOP, cb(), 5)
    assert not hasattr(event, "__dict__")
    with pytest.raises(AttributeError):
        event.callback = None  # type: ignore[attr-defined]
    event.done = True
    assert event.done


def test_event_repr() -> None:
    event = Event[Callback](EventKind.CHILD_STATE, 12, STOP, cb())
    text = repr(event)
    assert "CHILD_STATE" in text
    assert "pid=12" in text
    assert f"{STOP:#x}" in text
    assert "done=False" in text
    event.done = True
    assert "done=True" in repr(event)
    assert "STOLEN" in repr(Event[Callback](EventKind.STOLEN, 3, -1, None))  # -1 formats too


def test_uid_travels_with_the_event() -> None:
    ledger = new_ledger()
    a, b, c = cb(1), cb(2), cb(3)
    ledger.add(1, a)
    ledger.add(2, b)
    ledger.add(3, c)
    assert ledger.changed(1, STOP, uid=1000)
    assert ledger.exited(1, 0, uid=1000)
    assert ledger.exited(2, 0)  # waitpid: no uid
    assert ledger.stolen(3)
    assert ledger.foreign(50, 0, EventKind.FOREIGN, uid=0)
    assert ledger.foreign(51, 0, EventKind.UNKNOWN)
    assert pops(ledger, 7) == [
        ev(EventKind.CHILD_STATE, 1, STOP, a, 1000),
        ev(EventKind.CHILD_EXIT, 1, 0, a, 1000),
        ev(EventKind.CHILD_EXIT, 2, 0, b, None),
        ev(EventKind.STOLEN, 3, -1, c, None),
        ev(EventKind.FOREIGN, 50, 0, None, 0),
        ev(EventKind.UNKNOWN, 51, 0, None, None),
        None,
    ]


def test_stolen_records_a_stolen_event() -> None:
    ledger = new_ledger()
    callback = cb()
    ledger.add(10, callback)
    assert ledger.stolen(10)
    assert phase_of(callback) is Phase.LOST
    assert ledger.unreaped == 0
    assert ledger.outstanding() == frozenset({10})
    assert fields(ledger.pop()) == ev(EventKind.STOLEN, 10, -1, callback)
    assert phase_of(callback) is Phase.DELIVERED
    assert ledger.outstanding() == frozenset()


@pytest.mark.parametrize("how", ["exited", "peeked", "stolen", "forget"])
def test_leaving_an_unknown_pid_returns_false(how: str) -> None:
    ledger = new_ledger()
    ledger.add(10, cb())

    def leave(pid: int) -> bool:
        if how == "exited":
            return ledger.exited(pid, 0)
        if how == "peeked":
            return ledger.peeked(pid, 0)
        if how == "stolen":
            return ledger.stolen(pid)
        return ledger.forget(pid)

    assert leave(11) is False
    assert ledger.unreaped == 1
    assert not ledger.has_events
    # A child leaves running only once: the second report is unknown too.
    assert leave(10) is True
    assert leave(10) is False
    assert ledger.exited(10, 0) is False
    assert ledger.peeked(10, 0) is False
    assert ledger.stolen(10) is False
    assert ledger.changed(10, STOP) is False
    assert ledger.forget(10) is False
    expected_events = 0 if how == "forget" else 1
    assert [ledger.pop() is not None for _ in range(expected_events)] == [True] * expected_events
    assert ledger.pop() is None


# -- peeked (reap_after_callback) -------------------------------------------------


def test_peeked_records_the_exit_of_a_zombie() -> None:
    ledger = new_ledger()
    callback = cb()
    ledger.add(10, callback)
    assert ledger.peeked(10, 4 << 8, uid=7)
    assert phase_of(callback) is Phase.EXIT_SEEN
    assert not ledger.is_running(10)
    assert ledger.outstanding() == frozenset({10})
    event = ledger.next_event()
    assert event is not None
    assert ledger.delivering(event) is Phase.REAP_DUE
    assert fields(ledger.pop()) == ev(EventKind.CHILD_EXIT, 10, 4 << 8, callback, 7)
    assert phase_of(callback) is Phase.REAP_DUE  # delivered: the caller reaps it now
    assert Ledger.finished(callback)
    assert ledger.outstanding() == frozenset()


def test_a_stopped_child_can_be_peeked_or_reaped() -> None:
    ledger = new_ledger()
    a, b = cb(1), cb(2)
    ledger.add(1, a)
    ledger.add(2, b)
    assert ledger.changed(1, STOP)
    assert ledger.changed(2, STOP)
    assert ledger.peeked(1, 9)
    assert ledger.exited(2, 9)
    assert (a.phase, b.phase) == (Phase.EXIT_SEEN, Phase.EXITED)


# -- changed (stop / continue) -------------------------------------------------


def test_changed_queues_a_state_event_and_the_child_stays_running() -> None:
    ledger = new_ledger()
    callback = cb()
    ledger.add(10, callback)
    assert ledger.changed(10, STOP)
    assert phase_of(callback) is Phase.STOPPED
    assert ledger.is_running(10)
    assert ledger.unreaped == 1
    assert ledger.handle(10) is callback
    assert ledger.running_pids() == [10]
    assert ledger.has_events
    event = ledger.next_event()
    assert event is not None
    assert ledger.delivering(event) is None  # not an exit: the phase does not move
    assert fields(ledger.pop()) == ev(EventKind.CHILD_STATE, 10, STOP, callback)
    assert phase_of(callback) is Phase.STOPPED
    assert ledger.pop() is None
    assert ledger.is_running(10)
    assert ledger.changed(10, CONT)
    assert phase_of(callback) is Phase.RUNNING


def test_changed_of_unknown_pid_returns_false_and_queues_nothing() -> None:
    ledger = new_ledger()
    assert ledger.changed(10, STOP) is False
    ledger.add(10, cb())
    assert ledger.changed(11, STOP, uid=5) is False
    assert not ledger.has_events
    assert ledger.unreaped == 1


def test_several_changes_are_delivered_in_order_before_the_exit() -> None:
    ledger = new_ledger()
    a, b = cb(1), cb(2)
    ledger.add(1, a)
    ledger.add(2, b)
    assert ledger.changed(1, STOP)
    assert ledger.changed(2, STOP)
    assert ledger.changed(1, CONT)
    assert ledger.changed(1, STOP)
    assert ledger.exited(1, 9)
    assert ledger.changed(1, CONT) is False  # dead: no more changes
    assert ledger.changed(2, CONT)
    assert ledger.exited(2, 0)
    assert pops(ledger, 8) == [
        ev(EventKind.CHILD_STATE, 1, STOP, a),
        ev(EventKind.CHILD_STATE, 2, STOP, b),
        ev(EventKind.CHILD_STATE, 1, CONT, a),
        ev(EventKind.CHILD_STATE, 1, STOP, a),
        ev(EventKind.CHILD_EXIT, 1, 9, a),
        ev(EventKind.CHILD_STATE, 2, CONT, b),
        ev(EventKind.CHILD_EXIT, 2, 0, b),
        None,
    ]


def test_outstanding_ignores_state_events() -> None:
    ledger = new_ledger()
    ledger.add(1, cb(1))
    assert ledger.changed(1, STOP)
    assert ledger.outstanding() == frozenset({1})  # running
    assert ledger.forget(1)
    # Only a state event is left: pid 1's exit will never be delivered here.
    assert ledger.has_events
    assert ledger.outstanding() == frozenset()
    event = ledger.pop()
    assert event is not None
    assert event.kind is EventKind.CHILD_STATE


# -- replays ---------------------------------------------------------------------


def test_the_same_changed_news_twice_queues_one_event() -> None:
    ledger = new_ledger()
    callback = cb()
    ledger.add(1, callback)
    news = object()
    assert ledger.changed(1, STOP, news=news) is True
    assert ledger.changed(1, STOP, news=news) is False  # the replay
    assert phase_of(callback) is Phase.STOPPED
    other = object()
    assert ledger.changed(1, CONT, news=other) is True  # new news
    assert pops(ledger, 3) == [
        ev(EventKind.CHILD_STATE, 1, STOP, callback),
        ev(EventKind.CHILD_STATE, 1, CONT, callback),
        None,
    ]


def test_changed_without_news_is_never_a_replay() -> None:
    ledger = new_ledger()
    ledger.add(1, cb())
    assert ledger.changed(1, STOP)
    assert ledger.changed(1, STOP)
    assert ledger.changed(1, STOP, news=None)
    assert len(pops(ledger, 3)) == 3
    assert ledger.pop() is None


def test_equal_news_is_not_the_same_news() -> None:
    # Two reports that look alike are two events: only the same object is a replay.
    ledger = new_ledger()
    ledger.add(1, cb())
    assert ledger.changed(1, STOP, news=[1, STOP])
    assert ledger.changed(1, STOP, news=[1, STOP])
    assert [e is not None for e in pops(ledger, 2)] == [True, True]


def test_only_the_last_news_is_remembered() -> None:
    # A replay follows its interruption at once: the news before the last is not kept.
    ledger = new_ledger()
    ledger.add(1, cb())
    a, b = object(), object()
    assert ledger.changed(1, STOP, news=a)
    assert ledger.changed(1, CONT, news=b)
    assert ledger.changed(1, STOP, news=a)
    assert [e is not None for e in pops(ledger, 4)] == [True, True, True, False]


def test_changed_news_of_an_unknown_pid_is_not_remembered() -> None:
    ledger = new_ledger()
    news = object()
    assert ledger.changed(1, STOP, news=news) is False
    ledger.add(1, cb())
    assert ledger.changed(1, STOP, news=news) is True


def test_the_same_foreign_news_twice_queues_one_event() -> None:
    ledger = new_ledger()
    news = object()
    assert ledger.foreign(50, 0, EventKind.FOREIGN, news=news) is True
    assert ledger.foreign(50, 0, EventKind.FOREIGN, news=news) is False
    assert ledger.foreign(50, 0, EventKind.FOREIGN) is True  # no news: no dedupe
    assert ledger.foreign(50, 0, EventKind.FOREIGN) is True
    assert pops(ledger, 4) == [ev(EventKind.FOREIGN, 50, 0, None)] * 3 + [None]


def test_news_is_shared_between_changed_and_foreign() -> None:
    ledger = new_ledger()
    ledger.add(1, cb())
    news = object()
    assert ledger.changed(1, STOP, news=news)
    assert ledger.foreign(1, STOP, EventKind.UNKNOWN, news=news) is False
    assert ledger.pop() is not None
    assert ledger.pop() is None


@pytest.mark.parametrize("how", ["exited", "peeked", "stolen"])
def test_the_same_exit_twice_queues_one_event(how: str) -> None:
    ledger = new_ledger()
    callback = cb()
    ledger.add(1, callback)

    def report() -> bool:
        if how == "exited":
            return ledger.exited(1, 0)
        if how == "peeked":
            return ledger.peeked(1, 0)
        return ledger.stolen(1)

    assert report() is True
    phase = callback.phase
    assert report() is False
    assert callback.phase is phase
    assert ledger.pop() is not None
    assert ledger.pop() is None


@pytest.mark.parametrize(
    ("how", "phase", "kind"),
    [
        ("exited", Phase.EXITED, EventKind.CHILD_EXIT),
        ("peeked", Phase.EXIT_SEEN, EventKind.CHILD_EXIT),
        ("stolen", Phase.LOST, EventKind.STOLEN),
    ],
)
def test_an_exit_interrupted_after_its_commit_and_replayed(how: str, phase: Phase, kind: EventKind) -> None:
    ledger, running = interruptible()
    callback = cb()
    ledger.add(1, callback)

    def report() -> bool:
        if how == "exited":
            return ledger.exited(1, 5 << 8)
        if how == "peeked":
            return ledger.peeked(1, 5 << 8)
        return ledger.stolen(1)

    running.armed = True
    with pytest.raises(KeyboardInterrupt):
        report()
    # Committed: moved and queued; the bookkeeping (leaving `running`) was not done.
    assert callback.phase is phase
    assert ledger.is_running(1)
    assert len(ledger.queue) == 1
    assert ledger.outstanding() == frozenset({1})
    # The replay finds the child moved: it queues nothing and finishes the bookkeeping.
    assert report() is False
    assert callback.phase is phase
    assert not ledger.is_running(1)
    assert len(ledger.queue) == 1
    event = ledger.pop()
    assert event is not None
    assert (event.kind, event.handle) == (kind, callback)
    assert ledger.pop() is None


@pytest.mark.parametrize("first", ["exited", "peeked", "stolen"])
@pytest.mark.parametrize("second", ["exited", "peeked", "stolen"])
def test_another_report_of_a_death_already_committed(first: str, second: str) -> None:
    # Interrupted after the commit, then a different report of the same death arrives
    # (the reap's ECHILD, say): the first record stands, nothing more is queued.
    ledger, running = interruptible()
    callback = cb()
    ledger.add(1, callback)
    reports = {
        "exited": lambda: ledger.exited(1, 0),
        "peeked": lambda: ledger.peeked(1, 0),
        "stolen": lambda: ledger.stolen(1),
    }
    running.armed = True
    with pytest.raises(KeyboardInterrupt):
        reports[first]()
    phase = callback.phase
    assert reports[second]() is False
    assert callback.phase is phase
    assert not ledger.is_running(1)
    assert len(ledger.queue) == 1


def test_forget_interrupted_and_replayed() -> None:
    ledger, running = interruptible()
    callback = cb()
    ledger.add(1, callback)
    running.armed = True
    with pytest.raises(KeyboardInterrupt):
        ledger.forget(1)
    assert phase_of(callback) is Phase.RELEASED
    assert ledger.forget(1) is True  # the bookkeeping is done now
    assert phase_of(callback) is Phase.RELEASED
    assert not ledger.is_running(1)
    assert not ledger.has_events


def test_an_interrupted_exit_then_the_context_closes() -> None:
    ledger, running = interruptible()
    callback = cb()
    ledger.add(1, callback)
    running.armed = True
    with pytest.raises(KeyboardInterrupt):
        ledger.exited(1, 0)
    assert ledger.forget_running() == [1]
    assert phase_of(callback) is Phase.RELEASED  # exit seen, then given up
    assert ledger.discard_queue() == 1
    assert phase_of(callback) is Phase.RELEASED
    assert ledger.outstanding() == frozenset()


# -- delivery primitives ----------------------------------------------------------


def test_next_event_leaves_the_event_queued_until_done() -> None:
    ledger = new_ledger()
    callback = cb()
    ledger.add(1, callback)
    assert ledger.exited(1, 0)
    first = ledger.next_event()
    assert first is not None
    assert ledger.next_event() is first  # not removed
    assert not first.done
    assert ledger.has_events
    # The caller's commit (as _delivery does): the phase, computed first, then the stores.
    phase = ledger.delivering(first)
    assert phase is Phase.DELIVERED
    assert phase_of(callback) is Phase.EXITED  # delivering() computes, it does not move
    first.done = True
    callback.phase = phase
    assert ledger.outstanding() == frozenset()
    assert ledger.next_event() is None  # a done event is dropped
    assert not ledger.queue
    assert not ledger.has_events
    assert ledger.pop() is None


def test_done_events_are_skipped_by_pop() -> None:
    ledger = new_ledger()
    a, b = cb(1), cb(2)
    ledger.add(1, a)
    ledger.add(2, b)
    assert ledger.exited(1, 0)
    assert ledger.exited(2, 0)
    first = ledger.next_event()
    assert first is not None
    first.done = True
    a.phase = Phase.DELIVERED
    assert fields(ledger.pop()) == ev(EventKind.CHILD_EXIT, 2, 0, b)
    assert ledger.pop() is None


@pytest.mark.parametrize(
    ("report", "after"),
    [("exited", Phase.DELIVERED), ("peeked", Phase.REAP_DUE), ("stolen", Phase.DELIVERED)],
)
def test_delivering_an_exit(report: str, after: Phase) -> None:
    ledger = new_ledger()
    callback = cb()
    ledger.add(1, callback)
    if report == "exited":
        ledger.exited(1, 0)
    elif report == "peeked":
        ledger.peeked(1, 0)
    else:
        ledger.stolen(1)
    event = ledger.next_event()
    assert event is not None
    before = callback.phase
    assert ledger.delivering(event) is after
    assert callback.phase is before
    ledger.pop()
    assert callback.phase is after


def test_delivering_other_events_is_none() -> None:
    ledger = new_ledger()
    ledger.add(1, cb())
    ledger.changed(1, STOP)
    ledger.foreign(2, 0, EventKind.FOREIGN)
    ledger.foreign(3, 0, EventKind.UNKNOWN)
    for event in list(ledger.queue):
        assert ledger.delivering(event) is None


def test_outstanding_skips_done_exits() -> None:
    ledger = new_ledger()
    ledger.add(1, cb())
    assert ledger.exited(1, 0)
    event = ledger.next_event()
    assert event is not None
    event.done = True  # delivered, not yet dropped from the queue
    assert len(ledger.queue) == 1
    assert ledger.outstanding() == frozenset()


def test_outstanding_skips_an_exit_whose_child_was_given_up() -> None:
    # A released child's queued exit is not owed any more.
    ledger = new_ledger()
    callback = cb()
    ledger.add(1, callback)
    assert ledger.exited(1, 0)
    callback.phase = advance(callback.phase, Move.RELEASE)
    assert callback.phase not in OUTSTANDING
    assert ledger.outstanding() == frozenset()
    assert ledger.has_events  # still queued, for the caller to skip


@pytest.mark.parametrize("report", ["exited", "peeked", "stolen"])
def test_an_exit_queued_before_a_release_can_still_be_popped(report: str) -> None:
    ledger = new_ledger()
    callback = cb()
    ledger.add(1, callback)
    getattr(ledger, report)(*((1,) if report == "stolen" else (1, 0)))
    callback.phase = advance(callback.phase, Move.RELEASE)  # (EXITED|EXIT_SEEN|LOST, RELEASE) is legal
    event = ledger.pop()
    assert event is not None
    assert callback.phase in FINISHED


# -- forget --------------------------------------------------------------------


def test_forget_drops_a_running_child_with_no_event() -> None:
    ledger = new_ledger()
    gone, kept = cb(1), cb(2)
    ledger.add(1, gone)
    ledger.add(2, kept)
    assert ledger.forget(1) is True
    assert phase_of(gone) is Phase.RELEASED
    assert Ledger.finished(gone)
    assert not ledger.is_running(1)
    assert ledger.handle(1) is None
    assert ledger.unreaped == 1
    assert ledger.running_pids() == [2]
    assert ledger.running_handles() == [kept]
    assert not ledger.has_events
    assert ledger.outstanding() == frozenset({2})
    assert ledger.forget(1) is False


@pytest.mark.parametrize(("move", "phase"), [(Move.RELEASE, Phase.RELEASED), (Move.ABANDON, Phase.ORPHANED)])
def test_forget_moves_the_child(move: Move, phase: Phase) -> None:
    ledger = new_ledger()
    running, stopped = cb(1), cb(2)
    ledger.add(1, running)
    ledger.add(2, stopped)
    ledger.changed(2, STOP)
    assert ledger.forget(1, move)
    assert ledger.forget(2, move)
    assert running.phase is phase
    assert stopped.phase is phase


def test_forget_with_an_illegal_move_changes_nothing() -> None:
    ledger = new_ledger()
    callback = cb()
    ledger.add(1, callback)
    with pytest.raises(IllegalMove):
        ledger.forget(1, Move.DELIVER)
    assert phase_of(callback) is Phase.RUNNING
    assert ledger.is_running(1)


def test_forget_keeps_events_queued_before_it() -> None:
    ledger = new_ledger()
    callback = cb()
    ledger.add(1, callback)
    assert ledger.changed(1, STOP)
    assert ledger.forget(1)
    assert ledger.changed(1, CONT) is False
    assert ledger.exited(1, 0) is False
    assert ledger.stolen(1) is False
    assert fields(ledger.pop()) == ev(EventKind.CHILD_STATE, 1, STOP, callback)
    assert phase_of(callback) is Phase.RELEASED
    assert ledger.pop() is None


def test_forget_does_not_touch_a_queued_exit_of_a_reused_pid() -> None:
    ledger = new_ledger()
    old, new = cb(1), cb(2)
    ledger.add(7, old)
    assert ledger.exited(7, 1 << 8)
    ledger.add(7, new)  # pid reused before the old exit was delivered
    assert ledger.forget(7)
    assert phase_of(old) is Phase.EXITED
    assert phase_of(new) is Phase.RELEASED
    assert ledger.outstanding() == frozenset({7})  # the old child's exit is still owed
    assert fields(ledger.pop()) == ev(EventKind.CHILD_EXIT, 7, 1 << 8, old)
    assert ledger.pop() is None
    assert ledger.outstanding() == frozenset()


def test_pid_reuse_after_forget() -> None:
    ledger = new_ledger()
    new = cb(2)
    ledger.add(7, cb(1))
    assert ledger.forget(7)
    ledger.add(7, new)
    assert ledger.handle(7) is new
    assert ledger.exited(7, 0)
    assert fields(ledger.pop()) == ev(EventKind.CHILD_EXIT, 7, 0, new)
    assert ledger.pop() is None


# -- foreign, order, views ------------------------------------------------------


@pytest.mark.parametrize("kind", [EventKind.FOREIGN, EventKind.UNKNOWN])
def test_foreign_accepts_foreign_kinds(kind: EventKind) -> None:
    ledger = new_ledger()
    assert ledger.foreign(99, 0x0900, kind) is True
    assert ledger.outstanding() == frozenset()
    assert fields(ledger.pop()) == ev(kind, 99, 0x0900, None)


@pytest.mark.parametrize("kind", [EventKind.CHILD_EXIT, EventKind.CHILD_STATE, EventKind.STOLEN])
def test_foreign_rejects_own_kinds(kind: EventKind) -> None:
    ledger = new_ledger()
    with pytest.raises(ValueError):
        ledger.foreign(99, 0, kind)
    with pytest.raises(ValueError):
        ledger.foreign(99, 0, kind, uid=0)
    news = object()
    with pytest.raises(ValueError):
        ledger.foreign(99, 0, kind, news=news)
    assert not ledger.has_events
    # The refused call did not remember its news.
    assert ledger.foreign(99, 0, EventKind.FOREIGN, news=news) is True


def test_pop_is_fifo() -> None:
    ledger = new_ledger()
    callbacks = {pid: cb(pid) for pid in (1, 2, 3)}
    for pid, callback in callbacks.items():
        ledger.add(pid, callback)
    assert ledger.exited(2, 2 << 8)
    ledger.foreign(50, 0, EventKind.FOREIGN)
    assert ledger.changed(3, STOP)
    assert ledger.stolen(1)
    ledger.foreign(51, 9, EventKind.UNKNOWN)
    assert ledger.exited(3, 3 << 8)
    assert pops(ledger, 7) == [
        ev(EventKind.CHILD_EXIT, 2, 2 << 8, callbacks[2]),
        ev(EventKind.FOREIGN, 50, 0, None),
        ev(EventKind.CHILD_STATE, 3, STOP, callbacks[3]),
        ev(EventKind.STOLEN, 1, -1, callbacks[1]),
        ev(EventKind.UNKNOWN, 51, 9, None),
        ev(EventKind.CHILD_EXIT, 3, 3 << 8, callbacks[3]),
        None,
    ]


def test_outstanding_is_running_plus_queued_exits() -> None:
    ledger = new_ledger()
    for pid in (1, 2, 3, 4, 5, 6):
        ledger.add(pid, cb(pid))
    assert ledger.exited(1, 0)
    assert ledger.stolen(2)
    assert ledger.peeked(6, 0)
    assert ledger.changed(5, STOP)
    assert ledger.forget(5)
    ledger.foreign(70, 0, EventKind.FOREIGN)
    ledger.foreign(71, 0, EventKind.UNKNOWN)
    assert ledger.outstanding() == frozenset({1, 2, 3, 4, 6})
    assert set(ledger.running_pids()) == {3, 4}
    assert ledger.unreaped == 2
    # Delivering an exit removes its pid; state and foreign events never counted.
    popped = ledger.pop()
    assert popped is not None
    assert popped.pid == 1
    assert ledger.outstanding() == frozenset({2, 3, 4, 6})
    ledger.pop()
    assert ledger.outstanding() == frozenset({3, 4, 6})
    ledger.pop()
    assert ledger.outstanding() == frozenset({3, 4})
    for _ in range(3):
        assert ledger.pop() is not None
    assert ledger.outstanding() == frozenset({3, 4})
    assert not ledger.has_events


def test_outstanding_is_a_snapshot() -> None:
    ledger = new_ledger()
    ledger.add(1, cb())
    snap = ledger.outstanding()
    ledger.add(2, cb())
    assert snap == frozenset({1})


def test_pid_reuse_while_old_event_is_queued() -> None:
    ledger = new_ledger()
    old, new = cb(1), cb(2)
    ledger.add(7, old)
    assert ledger.exited(7, 1 << 8)
    # The kernel reuses pid 7 before the old exit was delivered.
    ledger.add(7, new)
    assert ledger.is_running(7)
    assert ledger.handle(7) is new
    assert ledger.unreaped == 1
    assert ledger.outstanding() == frozenset({7})
    assert ledger.exited(7, 2 << 8)
    assert pops(ledger, 3) == [
        ev(EventKind.CHILD_EXIT, 7, 1 << 8, old),
        ev(EventKind.CHILD_EXIT, 7, 2 << 8, new),
        None,
    ]
    assert ledger.outstanding() == frozenset()
    assert old.phase is new.phase is Phase.DELIVERED


def test_pid_reuse_after_stolen() -> None:
    ledger = new_ledger()
    old, new = cb(1), cb(2)
    ledger.add(7, old)
    assert ledger.stolen(7)
    ledger.add(7, new)
    assert ledger.exited(7, 0)
    assert fields(ledger.pop()) == ev(EventKind.STOLEN, 7, -1, old)
    assert fields(ledger.pop()) == ev(EventKind.CHILD_EXIT, 7, 0, new)


def test_forget_running_and_discard_queue() -> None:
    ledger = new_ledger()
    callbacks = {pid: cb(pid) for pid in (5, 3, 9, 4)}
    for pid, callback in callbacks.items():
        ledger.add(pid, callback)
    assert ledger.exited(3, 0)
    assert ledger.stolen(4)
    assert ledger.changed(5, STOP)
    ledger.foreign(40, 0, EventKind.UNKNOWN)
    assert ledger.forget_running() == [5, 9]
    assert callbacks[5].phase is callbacks[9].phase is Phase.ORPHANED
    assert ledger.unreaped == 0
    assert ledger.running_handles() == []
    assert ledger.forget_running() == []
    # Forgotten children are unknown now.
    assert ledger.exited(5, 0) is False
    assert ledger.stolen(9) is False
    assert ledger.changed(9, STOP) is False
    assert ledger.forget(9) is False
    assert ledger.outstanding() == frozenset({3, 4})
    assert ledger.discard_queue() == 4
    # Exits seen but never delivered: the children were given up.
    assert callbacks[3].phase is callbacks[4].phase is Phase.RELEASED
    assert callbacks[5].phase is Phase.ORPHANED
    assert ledger.discard_queue() == 0
    assert ledger.pop() is None
    assert ledger.outstanding() == frozenset()


def test_discard_queue_counts_only_undelivered_events() -> None:
    ledger = new_ledger()
    a, b = cb(1), cb(2)
    ledger.add(1, a)
    ledger.add(2, b)
    assert ledger.exited(1, 0)
    assert ledger.peeked(2, 0)
    first = ledger.next_event()
    assert first is not None
    first.done = True  # being delivered by another thread
    a.phase = Phase.DELIVERED
    assert ledger.discard_queue() == 1
    assert phase_of(a) is Phase.DELIVERED  # untouched
    assert phase_of(b) is Phase.RELEASED  # exit seen, zombie to reap without callback
    assert not ledger.queue


def test_running_pids_and_handles_in_insertion_order() -> None:
    ledger = new_ledger()
    callbacks = {pid: cb(pid) for pid in (30, 10, 20)}
    for pid, callback in callbacks.items():
        ledger.add(pid, callback)
    assert ledger.running_pids() == [30, 10, 20]
    assert ledger.running_handles() == [callbacks[30], callbacks[10], callbacks[20]]
    pids = ledger.running_pids()
    pids.clear()  # a copy: the ledger is unaffected
    handles = ledger.running_handles()
    handles.clear()  # a copy too
    assert ledger.unreaped == 3
    assert len(ledger.running_handles()) == 3
    assert ledger.forget(10)
    assert ledger.running_handles() == [callbacks[30], callbacks[20]]


def test_finished() -> None:
    record = cb()
    for phase in Phase:
        record.phase = phase
        assert Ledger.finished(record) is (phase in FINISHED)


# -- stateful model ------------------------------------------------------------

UNKNOWN_PID = 10_000  # never added
EXIT_KINDS = (EventKind.CHILD_EXIT, EventKind.STOLEN)


class RecordingDeque(deque[Event[Callback]]):
    """``Ledger.queue`` that remembers every event ever queued."""

    def __init__(self) -> None:
        super().__init__()
        self.ever: list[Event[Callback]] = []

    def append(self, event: Event[Callback]) -> None:
        self.ever.append(event)
        super().append(event)


@dataclass
class Child:
    """One child as the model sees it (a reused pid is a new Child)."""

    serial: int
    pid: int
    callback: Callback
    phase: Phase = Phase.RUNNING  # what the model expects, computed without the table
    ended: str | None = None  # "exited" / "peeked" / "stolen" / "forgotten" once it left running
    ended_at: int | None = None  # the event sequence number when it left running
    delivered: int = 0  # exit (or stolen) events delivered
    dropped: bool = False  # dropped by forget_running, or its exit event discarded
    states_recorded: int = 0
    states_discarded: int = 0
    states_delivered: list[int] = field(default_factory=list)  # sequence numbers, in delivery order


@dataclass
class Expected:
    seq: int  # when it was recorded; increases with every recorded event
    kind: EventKind
    pid: int
    status: int
    child: Child | None  # None for foreign events
    uid: int | None


@dataclass
class Model:
    children: list[Child] = field(default_factory=list)
    running: dict[int, Child] = field(default_factory=dict)
    queue: list[Expected] = field(default_factory=list)
    used_pids: set[int] = field(default_factory=set)

    def outstanding(self) -> frozenset[int]:
        queued = {e.pid for e in self.queue if e.kind in EXIT_KINDS}
        return frozenset(self.running).union(queued)


statuses = st.integers(min_value=0, max_value=0xFFFF)
uids = st.none() | st.integers(min_value=0, max_value=2**32 - 1)
EXIT_REPORTS = ("exited", "peeked", "stolen")
LEFT = {"exited": Phase.EXITED, "peeked": Phase.EXIT_SEEN, "stolen": Phase.LOST}
DELIVERED = {Phase.EXITED: Phase.DELIVERED, Phase.EXIT_SEEN: Phase.REAP_DUE, Phase.LOST: Phase.DELIVERED}


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = new_ledger()
        self.running: InterruptingDict[Callback] = InterruptingDict()
        self.recorded = RecordingDeque()
        self.ledger.running = self.running
        self.ledger.queue = self.recorded
        self.model = Model()
        self.next_pid = 100
        self.next_serial = 0
        self.seq = itertools.count()

    @initialize()
    def start(self) -> None:
        assert self.ledger.outstanding() == frozenset()

    # -- helpers ---------------------------------------------------------
    def _add(self, pid: int) -> None:
        callback = Callback(self.next_serial)
        child = Child(self.next_serial, pid, callback)
        self.next_serial += 1
        self.ledger.add(pid, callback)
        self.model.children.append(child)
        self.model.running[pid] = child
        self.model.used_pids.add(pid)

    def _reusable(self) -> list[int]:
        return sorted(self.model.used_pids - set(self.model.running))

    def _any_pid(self) -> list[int]:
        return sorted(self.model.used_pids | {UNKNOWN_PID})

    def _queue(self, kind: EventKind, pid: int, status: int, child: Child | None, uid: int | None) -> None:
        self.model.queue.append(Expected(next(self.seq), kind, pid, status, child, uid))

    def _leave(self, pid: int, how: str) -> Child | None:
        child = self.model.running.pop(pid, None)
        if child is not None:
            assert child.ended is None
            child.ended = how
            child.ended_at = next(self.seq)
        return child

    def _report(self, how: str, pid: int, status: int, uid: int | None) -> bool:
        if how == "exited":
            return self.ledger.exited(pid, status, uid)
        if how == "peeked":
            return self.ledger.peeked(pid, status, uid)
        return self.ledger.stolen(pid)

    def _model_exit(self, how: str, pid: int, status: int, uid: int | None) -> None:
        child = self._leave(pid, how)
        if child is not None:
            child.phase = LEFT[how]
            if how == "stolen":
                self._queue(EventKind.STOLEN, pid, -1, child, None)
            else:
                self._queue(EventKind.CHILD_EXIT, pid, status, child, uid)

    # -- children --------------------------------------------------------
    @rule()
    def add_new(self) -> None:
        pid = self.next_pid
        self.next_pid += 1
        self._add(pid)

    @precondition(lambda self: bool(self._reusable()))
    @rule(data=st.data())
    def add_reused(self, data: st.DataObject) -> None:
        self._add(data.draw(st.sampled_from(self._reusable()), label="reused pid"))

    @precondition(lambda self: bool(self.model.running))
    @rule(data=st.data())
    def add_running_raises(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(sorted(self.model.running)), label="running pid")
        with pytest.raises(KeyError):
            self.ledger.add(pid, Callback(-1))
        self.ledger.add(pid, self.model.running[pid].callback)  # the same record: a no-op

    @rule(data=st.data(), how=st.sampled_from(EXIT_REPORTS), status=statuses, uid=uids)
    def exit_reported(self, data: st.DataObject, how: str, status: int, uid: int | None) -> None:
        pid = data.draw(st.sampled_from(self._any_pid()), label="pid")
        known = pid in self.model.running
        assert self._report(how, pid, status, uid) is known
        self._model_exit(how, pid, status, uid)

    @precondition(lambda self: bool(self.model.running))
    @rule(data=st.data(), status=statuses, uid=uids)
    def exit_replayed(self, data: st.DataObject, status: int, uid: int | None) -> None:
        """The same exit applied twice (or another report of the same death), the first
        one possibly interrupted between its commit and its bookkeeping."""
        pid = data.draw(st.sampled_from(sorted(self.model.running)), label="running pid")
        how = data.draw(st.sampled_from(EXIT_REPORTS), label="first report")
        again = data.draw(st.sampled_from(EXIT_REPORTS), label="second report")
        interrupted = data.draw(st.booleans(), label="interrupted")
        if interrupted:
            self.running.armed = True
            with pytest.raises(KeyboardInterrupt):
                self._report(how, pid, status, uid)
            assert self.ledger.is_running(pid)
        else:
            assert self._report(how, pid, status, uid) is True
        assert self._report(again, pid, status ^ 0x100, uid) is False
        assert not self.ledger.is_running(pid)
        self._model_exit(how, pid, status, uid)

    @rule(data=st.data(), interrupted=st.booleans())
    def forget(self, data: st.DataObject, interrupted: bool) -> None:
        pid = data.draw(st.sampled_from(self._any_pid()), label="pid")
        known = pid in self.model.running
        if interrupted and known:
            self.running.armed = True
            with pytest.raises(KeyboardInterrupt):
                self.ledger.forget(pid)
        assert self.ledger.forget(pid) is known
        child = self._leave(pid, "forgotten")
        if child is not None:
            child.phase = Phase.RELEASED

    def _changed(self, pid: int, status: int, uid: int | None, news: object = None) -> None:
        child = self.model.running.get(pid)
        assert self.ledger.changed(pid, status, uid, news=news) is (child is not None)
        if child is not None:
            child.states_recorded += 1
            child.phase = Phase.STOPPED if (status & 0xFF) == 0x7F else Phase.RUNNING
            self._queue(EventKind.CHILD_STATE, pid, status, child, uid)

    @rule(data=st.data(), status=statuses, uid=uids)
    def changed(self, data: st.DataObject, status: int, uid: int | None) -> None:
        self._changed(data.draw(st.sampled_from(self._any_pid()), label="pid"), status, uid)

    @precondition(lambda self: bool(self.model.running))
    @rule(data=st.data(), statuses=st.lists(statuses, min_size=1, max_size=4), uid=uids)
    def changed_running(self, data: st.DataObject, statuses: list[int], uid: int | None) -> None:
        pid = data.draw(st.sampled_from(sorted(self.model.running)), label="running pid")
        for status in statuses:
            self._changed(pid, status, uid)

    @precondition(lambda self: bool(self.model.running))
    @rule(data=st.data(), status=st.sampled_from([STOP, CONT]) | statuses, uid=uids)
    def changed_replayed(self, data: st.DataObject, status: int, uid: int | None) -> None:
        pid = data.draw(st.sampled_from(sorted(self.model.running)), label="running pid")
        news = object()
        self._changed(pid, status, uid, news=news)
        phase = self.model.running[pid].phase
        assert self.ledger.changed(pid, status, uid, news=news) is False
        assert self.model.running[pid].callback.phase is phase

    @rule(
        pid=st.integers(min_value=1, max_value=UNKNOWN_PID),
        status=statuses,
        kind=st.sampled_from([EventKind.FOREIGN, EventKind.UNKNOWN]),
        uid=uids,
        replayed=st.booleans(),
    )
    def foreign(self, pid: int, status: int, kind: EventKind, uid: int | None, replayed: bool) -> None:
        news = object() if replayed else None
        assert self.ledger.foreign(pid, status, kind, uid, news=news) is True
        if replayed:
            assert self.ledger.foreign(pid, status, kind, uid, news=news) is False
        self._queue(kind, pid, status, None, uid)

    @rule()
    def forget_running(self) -> None:
        expected = list(self.model.running)
        assert self.ledger.forget_running() == expected
        for child in self.model.running.values():
            child.dropped = True
            child.phase = Phase.ORPHANED
        self.model.running.clear()

    @rule()
    def discard_queue(self) -> None:
        assert self.ledger.discard_queue() == len(self.model.queue)
        for expected in self.model.queue:
            if expected.child is None:
                continue
            if expected.kind is EventKind.CHILD_STATE:
                expected.child.states_discarded += 1
            else:
                expected.child.dropped = True
                expected.child.phase = Phase.RELEASED
        self.model.queue.clear()

    # -- delivery --------------------------------------------------------
    def _take(self, by_hand: bool) -> Event[Callback] | None:
        if not by_hand:
            return self.ledger.pop()
        # As _delivery.deliver does it: peek, compute, commit with stores.
        event = self.ledger.next_event()
        if event is None:
            return None
        assert not event.done
        phase = self.ledger.delivering(event)
        event.done = True
        if phase is not None and event.handle is not None:
            event.handle.phase = phase
        return event

    def _pop_and_check(self, by_hand: bool = False) -> None:
        event = self._take(by_hand)
        if not self.model.queue:
            assert event is None
            return
        expected = self.model.queue.pop(0)
        assert event is not None
        assert event.done
        assert (event.kind, event.pid, event.status, event.uid) == (
            expected.kind,
            expected.pid,
            expected.status,
            expected.uid,
        )
        child = expected.child
        if child is None:
            assert event.handle is None
            return
        # The handle identifies the child, independently of the model's queue.
        assert event.handle is child.callback
        # Nothing recorded after a child left running is ever delivered for it.
        if child.ended_at is not None and expected.kind is EventKind.CHILD_STATE:
            assert expected.seq < child.ended_at
        if event.kind is EventKind.CHILD_STATE:
            # A child's changes come in the order they happened, all before its exit.
            assert child.delivered == 0, f"child {child.serial}: state event after its exit"
            assert all(seq < expected.seq for seq in child.states_delivered)
            child.states_delivered.append(expected.seq)
            return
        assert child.ended in EXIT_REPORTS
        assert child.phase in DELIVERED
        child.phase = DELIVERED[child.phase]
        if event.kind is EventKind.CHILD_EXIT:
            assert child.ended in ("exited", "peeked")
            event.handle(event.pid, event.status)
            assert child.callback.calls == [(event.pid, event.status)]
        else:
            assert event.kind is EventKind.STOLEN
            assert child.ended == "stolen"
        child.delivered += 1
        assert child.delivered == 1, f"child {child.serial} delivered twice"

    @rule(by_hand=st.booleans())
    def pop(self, by_hand: bool) -> None:
        self._pop_and_check(by_hand)

    # -- invariants ------------------------------------------------------
    @invariant()
    def running_matches(self) -> None:
        assert self.ledger.unreaped == len(self.model.running)
        assert self.ledger.running_pids() == list(self.model.running)
        handles = self.ledger.running_handles()
        assert len(handles) == len(self.model.running)
        for handle, running in zip(handles, self.model.running.values(), strict=True):
            assert handle is running.callback
        for pid in self.model.used_pids | {UNKNOWN_PID}:
            child = self.model.running.get(pid)
            assert self.ledger.is_running(pid) == (child is not None)
            assert self.ledger.handle(pid) is (child.callback if child is not None else None)

    @invariant()
    def phases_match(self) -> None:
        for child in self.model.children:
            assert child.callback.phase is child.phase, child
            assert Ledger.finished(child.callback) is (child.phase in FINISHED)

    @invariant()
    def events_match(self) -> None:
        assert self.ledger.has_events == bool(self.model.queue)
        assert self.ledger.outstanding() == self.model.outstanding()

    @invariant()
    def one_exit_event_per_child_ever(self) -> None:
        exits = [e.handle for e in self.recorded.ever if e.kind in EXIT_KINDS]
        assert all(handle is not None for handle in exits)
        assert len({id(handle) for handle in exits}) == len(exits), "a child got two exit events"
        for child in self.model.children:
            count = sum(handle is child.callback for handle in exits)
            assert count == (1 if child.ended in EXIT_REPORTS else 0), child

    @invariant()
    def never_twice(self) -> None:
        for child in self.model.children:
            assert child.delivered <= 1
            assert len(child.callback.calls) <= 1
            if child.delivered:
                assert child.ended in EXIT_REPORTS
            assert len(child.states_delivered) + child.states_discarded <= child.states_recorded

    def teardown(self) -> None:
        # Drain: every child that exited, was peeked or stolen, and was not dropped, is
        # delivered exactly once; children still running or forgotten never are;
        # every recorded change not discarded is delivered.
        for _ in range(len(self.model.queue) + 1):
            self._pop_and_check()
        assert self.ledger.pop() is None
        for child in self.model.children:
            if child.ended in EXIT_REPORTS and not child.dropped:
                assert child.delivered == 1, f"child {child.serial} lost"
                assert Ledger.finished(child.callback)
            else:
                assert child.delivered == 0
            expected_calls = 1 if child.ended in ("exited", "peeked") and child.delivered else 0
            assert len(child.callback.calls) == expected_calls
            assert len(child.states_delivered) + child.states_discarded == child.states_recorded


LedgerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
TestLedgerMachine = LedgerMachine.TestCase
