"""Exactly-once bookkeeping of :class:`childproc._ledger.Ledger`."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from childproc._ledger import ChildCallback, Event, EventKind, Ledger


class Callback:
    """A distinct callable per child, so an event can be traced back to the child."""

    def __init__(self, serial: int) -> None:
        self.serial = serial
        self.calls: list[tuple[int, int]] = []

    def __call__(self, pid: int, status: int) -> None:
        self.calls.append((pid, status))

    def __repr__(self) -> str:
        return f"Callback({self.serial})"


def cb(serial: int = 0) -> Callback:
    return Callback(serial)


def new_ledger() -> Ledger[Callback]:
    return Ledger[Callback]()


STOP = (19 << 8) | 0x7F  # stopped by SIGSTOP
CONT = 0xFFFF  # continued


# -- plain tests ---------------------------------------------------------------


def test_new_ledger_is_empty() -> None:
    ledger = new_ledger()
    assert ledger.unreaped == 0
    assert not ledger.has_events
    assert ledger.pop() is None
    assert ledger.running_pids() == []
    assert ledger.running_handles() == []
    assert ledger.handle(1) is None
    assert ledger.outstanding() == frozenset()


def test_handles_are_opaque() -> None:
    # Any object can be a handle: the ledger hands it back and never looks inside.
    ledger = Ledger[object]()
    handle = object()
    ledger.add(1, "a string handle")
    ledger.add(2, handle)
    ledger.add(3, 0)  # falsy, but not None
    assert ledger.handle(1) == "a string handle"
    assert ledger.handle(2) is handle
    assert ledger.handle(3) == 0
    assert ledger.running_handles() == ["a string handle", handle, 0]
    assert ledger.exited(3, 0)
    assert ledger.pop() == Event(EventKind.CHILD_EXIT, 3, 0, 0)
    assert ledger.changed(2, STOP)
    event = ledger.pop()
    assert event is not None
    assert event.callback is handle


def test_child_callback_handles_type_check() -> None:
    # The handle type Context.child_fork used before Child records: callback(pid, status).
    ledger = Ledger[ChildCallback]()
    calls: list[tuple[int, int]] = []

    def callback(pid: int, status: int) -> object:
        calls.append((pid, status))
        return None

    ledger.add(4, callback)
    assert ledger.exited(4, 2 << 8)
    event = ledger.pop()
    assert event is not None
    assert event.callback is callback
    event.callback(event.pid, event.status)
    assert calls == [(4, 2 << 8)]


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
    assert event.callback is first


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
    assert not ledger.is_running(10)
    assert ledger.unreaped == 0
    assert ledger.has_events
    assert ledger.pop() == Event(EventKind.CHILD_EXIT, 10, 3 << 8, callback)
    assert ledger.pop() is None
    assert not ledger.has_events


def test_event_uid_defaults_to_none() -> None:
    event = Event[Callback](EventKind.CHILD_EXIT, 1, 0, None)
    assert event.uid is None


def test_uid_travels_with_the_event() -> None:
    ledger = new_ledger()
    a, b = cb(1), cb(2)
    ledger.add(1, a)
    ledger.add(2, b)
    ledger.add(3, cb(3))
    assert ledger.changed(1, STOP, uid=1000)
    assert ledger.exited(1, 0, uid=1000)
    assert ledger.exited(2, 0)  # waitpid: no uid
    assert ledger.stolen(3)
    ledger.foreign(50, 0, EventKind.FOREIGN, uid=0)
    ledger.foreign(51, 0, EventKind.UNKNOWN)
    assert [ledger.pop() for _ in range(7)] == [
        Event(EventKind.CHILD_STATE, 1, STOP, a, 1000),
        Event(EventKind.CHILD_EXIT, 1, 0, a, 1000),
        Event(EventKind.CHILD_EXIT, 2, 0, b, None),
        Event(EventKind.STOLEN, 3, -1, None, None),
        Event(EventKind.FOREIGN, 50, 0, None, 0),
        Event(EventKind.UNKNOWN, 51, 0, None, None),
        None,
    ]


def test_stolen_records_a_stolen_event() -> None:
    ledger = new_ledger()
    ledger.add(10, cb())
    assert ledger.stolen(10)
    assert ledger.unreaped == 0
    assert ledger.pop() == Event(EventKind.STOLEN, 10, -1, None)


@pytest.mark.parametrize("how", ["exited", "stolen", "forget"])
def test_leaving_an_unknown_pid_returns_false(how: str) -> None:
    ledger = new_ledger()
    ledger.add(10, cb())

    def leave(pid: int) -> bool:
        if how == "exited":
            return ledger.exited(pid, 0)
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
    assert ledger.stolen(10) is False
    assert ledger.changed(10, STOP) is False
    assert ledger.forget(10) is False
    expected_events = 0 if how == "forget" else 1
    assert [ledger.pop() is not None for _ in range(expected_events)] == [True] * expected_events
    assert ledger.pop() is None


# -- changed (stop / continue) -------------------------------------------------


def test_changed_queues_a_state_event_and_the_child_stays_running() -> None:
    ledger = new_ledger()
    callback = cb()
    ledger.add(10, callback)
    assert ledger.changed(10, STOP)
    assert ledger.is_running(10)
    assert ledger.unreaped == 1
    assert ledger.handle(10) is callback
    assert ledger.running_pids() == [10]
    assert ledger.has_events
    assert ledger.pop() == Event(EventKind.CHILD_STATE, 10, STOP, callback)
    assert ledger.pop() is None
    assert ledger.is_running(10)


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
    assert [ledger.pop() for _ in range(8)] == [
        Event(EventKind.CHILD_STATE, 1, STOP, a),
        Event(EventKind.CHILD_STATE, 2, STOP, b),
        Event(EventKind.CHILD_STATE, 1, CONT, a),
        Event(EventKind.CHILD_STATE, 1, STOP, a),
        Event(EventKind.CHILD_EXIT, 1, 9, a),
        Event(EventKind.CHILD_STATE, 2, CONT, b),
        Event(EventKind.CHILD_EXIT, 2, 0, b),
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


# -- forget --------------------------------------------------------------------


def test_forget_drops_a_running_child_with_no_event() -> None:
    ledger = new_ledger()
    kept = cb(2)
    ledger.add(1, cb(1))
    ledger.add(2, kept)
    assert ledger.forget(1) is True
    assert not ledger.is_running(1)
    assert ledger.handle(1) is None
    assert ledger.unreaped == 1
    assert ledger.running_pids() == [2]
    assert ledger.running_handles() == [kept]
    assert not ledger.has_events
    assert ledger.outstanding() == frozenset({2})
    assert ledger.forget(1) is False


def test_forget_keeps_events_queued_before_it() -> None:
    ledger = new_ledger()
    callback = cb()
    ledger.add(1, callback)
    assert ledger.changed(1, STOP)
    assert ledger.forget(1)
    assert ledger.changed(1, CONT) is False
    assert ledger.exited(1, 0) is False
    assert ledger.stolen(1) is False
    assert ledger.pop() == Event(EventKind.CHILD_STATE, 1, STOP, callback)
    assert ledger.pop() is None


def test_forget_does_not_touch_a_queued_exit_of_a_reused_pid() -> None:
    ledger = new_ledger()
    old, new = cb(1), cb(2)
    ledger.add(7, old)
    assert ledger.exited(7, 1 << 8)
    ledger.add(7, new)  # pid reused before the old exit was delivered
    assert ledger.forget(7)
    assert ledger.outstanding() == frozenset({7})  # the old child's exit is still owed
    assert ledger.pop() == Event(EventKind.CHILD_EXIT, 7, 1 << 8, old)
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
    assert ledger.pop() == Event(EventKind.CHILD_EXIT, 7, 0, new)
    assert ledger.pop() is None


def test_a_none_handle_is_still_a_child() -> None:
    # Regression: exited/changed/stolen/forget once tested the handle with `is None`
    # to mean "not running", so a child whose handle is None was dropped silently.
    ledger = Ledger[object]()
    for pid in (1, 2, 3):
        ledger.add(pid, None)
    assert ledger.is_running(1)
    assert ledger.changed(1, STOP) is True
    assert ledger.is_running(1)
    assert ledger.exited(1, 0) is True
    assert ledger.stolen(2) is True
    assert ledger.forget(3) is True
    assert ledger.unreaped == 0
    assert [ledger.pop() for _ in range(4)] == [
        Event(EventKind.CHILD_STATE, 1, STOP, None),
        Event(EventKind.CHILD_EXIT, 1, 0, None),
        Event(EventKind.STOLEN, 2, -1, None),
        None,
    ]
    for pid in (1, 2, 3):
        assert ledger.exited(pid, 0) is False


# -- foreign, order, views ------------------------------------------------------


@pytest.mark.parametrize("kind", [EventKind.FOREIGN, EventKind.UNKNOWN])
def test_foreign_accepts_foreign_kinds(kind: EventKind) -> None:
    ledger = new_ledger()
    ledger.foreign(99, 0x0900, kind)
    assert ledger.pop() == Event(kind, 99, 0x0900, None)


@pytest.mark.parametrize("kind", [EventKind.CHILD_EXIT, EventKind.CHILD_STATE, EventKind.STOLEN])
def test_foreign_rejects_own_kinds(kind: EventKind) -> None:
    ledger = new_ledger()
    with pytest.raises(ValueError):
        ledger.foreign(99, 0, kind)
    with pytest.raises(ValueError):
        ledger.foreign(99, 0, kind, uid=0)
    assert not ledger.has_events


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
    assert [ledger.pop() for _ in range(7)] == [
        Event(EventKind.CHILD_EXIT, 2, 2 << 8, callbacks[2]),
        Event(EventKind.FOREIGN, 50, 0, None),
        Event(EventKind.CHILD_STATE, 3, STOP, callbacks[3]),
        Event(EventKind.STOLEN, 1, -1, None),
        Event(EventKind.UNKNOWN, 51, 9, None),
        Event(EventKind.CHILD_EXIT, 3, 3 << 8, callbacks[3]),
        None,
    ]


def test_outstanding_is_running_plus_queued_exits() -> None:
    ledger = new_ledger()
    for pid in (1, 2, 3, 4, 5):
        ledger.add(pid, cb(pid))
    assert ledger.exited(1, 0)
    assert ledger.stolen(2)
    assert ledger.changed(5, STOP)
    assert ledger.forget(5)
    ledger.foreign(70, 0, EventKind.FOREIGN)
    ledger.foreign(71, 0, EventKind.UNKNOWN)
    assert ledger.outstanding() == frozenset({1, 2, 3, 4})
    assert set(ledger.running_pids()) == {3, 4}
    assert ledger.unreaped == 2
    # Delivering an exit removes its pid; state and foreign events never counted.
    popped = ledger.pop()
    assert popped is not None
    assert popped.pid == 1
    assert ledger.outstanding() == frozenset({2, 3, 4})
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
    first, second = ledger.pop(), ledger.pop()
    assert first == Event(EventKind.CHILD_EXIT, 7, 1 << 8, old)
    assert second == Event(EventKind.CHILD_EXIT, 7, 2 << 8, new)
    assert ledger.pop() is None
    assert ledger.outstanding() == frozenset()


def test_pid_reuse_after_stolen() -> None:
    ledger = new_ledger()
    new = cb(2)
    ledger.add(7, cb(1))
    assert ledger.stolen(7)
    ledger.add(7, new)
    assert ledger.exited(7, 0)
    assert ledger.pop() == Event(EventKind.STOLEN, 7, -1, None)
    assert ledger.pop() == Event(EventKind.CHILD_EXIT, 7, 0, new)


def test_forget_running_and_discard_queue() -> None:
    ledger = new_ledger()
    for pid in (5, 3, 9):
        ledger.add(pid, cb(pid))
    assert ledger.exited(3, 0)
    assert ledger.changed(5, STOP)
    ledger.foreign(40, 0, EventKind.UNKNOWN)
    assert ledger.forget_running() == [5, 9]
    assert ledger.unreaped == 0
    assert ledger.running_handles() == []
    assert ledger.forget_running() == []
    # Forgotten children are unknown now.
    assert ledger.exited(5, 0) is False
    assert ledger.stolen(9) is False
    assert ledger.changed(9, STOP) is False
    assert ledger.forget(9) is False
    assert ledger.outstanding() == frozenset({3})
    assert ledger.discard_queue() == 3
    assert ledger.discard_queue() == 0
    assert ledger.pop() is None
    assert ledger.outstanding() == frozenset()


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


# -- stateful model ------------------------------------------------------------

UNKNOWN_PID = 10_000  # never added


@dataclass
class Child:
    """One child as the model sees it (a reused pid is a new Child)."""

    serial: int
    pid: int
    callback: Callback
    ended: str | None = None  # "exited" / "stolen" / "forgotten" once it left running
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
        queued = {e.pid for e in self.queue if e.kind in (EventKind.CHILD_EXIT, EventKind.STOLEN)}
        return frozenset(self.running).union(queued)


statuses = st.integers(min_value=0, max_value=0xFFFF)
uids = st.none() | st.integers(min_value=0, max_value=2**32 - 1)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = new_ledger()
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

    @rule(data=st.data(), status=statuses, uid=uids)
    def exited(self, data: st.DataObject, status: int, uid: int | None) -> None:
        pid = data.draw(st.sampled_from(self._any_pid()), label="pid")
        known = pid in self.model.running
        assert self.ledger.exited(pid, status, uid) is known
        child = self._leave(pid, "exited")
        if child is not None:
            self._queue(EventKind.CHILD_EXIT, pid, status, child, uid)

    @rule(data=st.data())
    def stolen(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(self._any_pid()), label="pid")
        known = pid in self.model.running
        assert self.ledger.stolen(pid) is known
        child = self._leave(pid, "stolen")
        if child is not None:
            self._queue(EventKind.STOLEN, pid, -1, child, None)

    @rule(data=st.data())
    def forget(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(self._any_pid()), label="pid")
        known = pid in self.model.running
        assert self.ledger.forget(pid) is known
        self._leave(pid, "forgotten")

    def _changed(self, pid: int, status: int, uid: int | None) -> None:
        child = self.model.running.get(pid)
        assert self.ledger.changed(pid, status, uid) is (child is not None)
        if child is not None:
            child.states_recorded += 1
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

    @rule(
        pid=st.integers(min_value=1, max_value=UNKNOWN_PID),
        status=statuses,
        kind=st.sampled_from([EventKind.FOREIGN, EventKind.UNKNOWN]),
        uid=uids,
    )
    def foreign(self, pid: int, status: int, kind: EventKind, uid: int | None) -> None:
        self.ledger.foreign(pid, status, kind, uid)
        self._queue(kind, pid, status, None, uid)

    @rule()
    def forget_running(self) -> None:
        expected = list(self.model.running)
        assert self.ledger.forget_running() == expected
        for child in self.model.running.values():
            child.dropped = True
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
        self.model.queue.clear()

    # -- delivery --------------------------------------------------------
    def _pop_and_check(self) -> None:
        event = self.ledger.pop()
        if not self.model.queue:
            assert event is None
            return
        expected = self.model.queue.pop(0)
        assert event is not None
        assert (event.kind, event.pid, event.status, event.uid) == (
            expected.kind,
            expected.pid,
            expected.status,
            expected.uid,
        )
        child = expected.child
        if child is None:
            assert event.callback is None
            return
        # Nothing recorded after a child left running is ever delivered for it.
        if child.ended_at is not None and expected.kind is EventKind.CHILD_STATE:
            assert expected.seq < child.ended_at
        if event.kind is EventKind.CHILD_STATE:
            # The handle identifies the child, independently of the model's queue.
            assert event.callback is child.callback
            # A child's changes come in the order they happened, all before its exit.
            assert child.delivered == 0, f"child {child.serial}: state event after its exit"
            assert all(seq < expected.seq for seq in child.states_delivered)
            child.states_delivered.append(expected.seq)
            return
        assert child.ended in ("exited", "stolen")
        if event.kind is EventKind.CHILD_EXIT:
            assert event.callback is child.callback
            event.callback(event.pid, event.status)
            assert child.callback.calls == [(event.pid, event.status)]
        else:
            assert event.kind is EventKind.STOLEN
            assert event.callback is None
        child.delivered += 1
        assert child.delivered == 1, f"child {child.serial} delivered twice"

    @rule()
    def pop(self) -> None:
        self._pop_and_check()

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
    def events_match(self) -> None:
        assert self.ledger.has_events == bool(self.model.queue)
        assert self.ledger.outstanding() == self.model.outstanding()

    @invariant()
    def never_twice(self) -> None:
        for child in self.model.children:
            assert child.delivered <= 1
            assert len(child.callback.calls) <= 1
            if child.delivered:
                assert child.ended in ("exited", "stolen")
            assert len(child.states_delivered) + child.states_discarded <= child.states_recorded

    def teardown(self) -> None:
        # Drain: every child that exited or was stolen, and was not dropped, is
        # delivered exactly once; children still running or forgotten never are;
        # every recorded change not discarded is delivered.
        for _ in range(len(self.model.queue) + 1):
            self._pop_and_check()
        assert self.ledger.pop() is None
        for child in self.model.children:
            if child.ended in ("exited", "stolen") and not child.dropped:
                assert child.delivered == 1, f"child {child.serial} lost"
            else:
                assert child.delivered == 0
            expected_calls = 1 if child.ended == "exited" and child.delivered else 0
            assert len(child.callback.calls) == expected_calls
            assert len(child.states_delivered) + child.states_discarded == child.states_recorded


LedgerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
TestLedgerMachine = LedgerMachine.TestCase
