"""Exactly-once bookkeeping of :class:`childproc._ledger.Ledger`."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from childproc._ledger import Event, EventKind, Ledger


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


# -- plain tests ---------------------------------------------------------------


def test_new_ledger_is_empty() -> None:
    ledger = Ledger()
    assert ledger.unreaped == 0
    assert not ledger.has_events
    assert ledger.pop() is None
    assert ledger.running_pids() == []
    assert ledger.outstanding() == frozenset()


def test_add_twice_raises_keyerror() -> None:
    ledger = Ledger()
    first = cb(1)
    ledger.add(10, first)
    with pytest.raises(KeyError):
        ledger.add(10, cb(2))
    # The failed add changed nothing: the first callback still gets the exit.
    assert ledger.unreaped == 1
    assert ledger.exited(10, 0)
    event = ledger.pop()
    assert event is not None
    assert event.callback is first


def test_exited_records_a_child_exit_event() -> None:
    ledger = Ledger()
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


def test_stolen_records_a_stolen_event() -> None:
    ledger = Ledger()
    ledger.add(10, cb())
    assert ledger.stolen(10)
    assert ledger.unreaped == 0
    assert ledger.pop() == Event(EventKind.STOLEN, 10, -1, None)


@pytest.mark.parametrize("how", ["exited", "stolen"])
def test_exited_or_stolen_of_unknown_pid_returns_false(how: str) -> None:
    ledger = Ledger()
    ledger.add(10, cb())

    def leave(pid: int) -> bool:
        return ledger.exited(pid, 0) if how == "exited" else ledger.stolen(pid)

    assert leave(11) is False
    assert ledger.unreaped == 1
    assert not ledger.has_events
    # A child leaves running only once: the second report is unknown too.
    assert leave(10) is True
    assert leave(10) is False
    assert ledger.exited(10, 0) is False
    assert ledger.stolen(10) is False
    assert ledger.pop() is not None
    assert ledger.pop() is None


@pytest.mark.parametrize("kind", [EventKind.FOREIGN, EventKind.UNKNOWN])
def test_foreign_accepts_foreign_kinds(kind: EventKind) -> None:
    ledger = Ledger()
    ledger.foreign(99, 0x0900, kind)
    assert ledger.pop() == Event(kind, 99, 0x0900, None)


@pytest.mark.parametrize("kind", [EventKind.CHILD_EXIT, EventKind.STOLEN])
def test_foreign_rejects_own_kinds(kind: EventKind) -> None:
    ledger = Ledger()
    with pytest.raises(ValueError):
        ledger.foreign(99, 0, kind)
    assert not ledger.has_events


def test_pop_is_fifo() -> None:
    ledger = Ledger()
    callbacks = {pid: cb(pid) for pid in (1, 2, 3)}
    for pid, callback in callbacks.items():
        ledger.add(pid, callback)
    assert ledger.exited(2, 2 << 8)
    ledger.foreign(50, 0, EventKind.FOREIGN)
    assert ledger.stolen(1)
    ledger.foreign(51, 9, EventKind.UNKNOWN)
    assert ledger.exited(3, 3 << 8)
    assert [ledger.pop() for _ in range(6)] == [
        Event(EventKind.CHILD_EXIT, 2, 2 << 8, callbacks[2]),
        Event(EventKind.FOREIGN, 50, 0, None),
        Event(EventKind.STOLEN, 1, -1, None),
        Event(EventKind.UNKNOWN, 51, 9, None),
        Event(EventKind.CHILD_EXIT, 3, 3 << 8, callbacks[3]),
        None,
    ]


def test_outstanding_is_running_plus_queued_own_events() -> None:
    ledger = Ledger()
    for pid in (1, 2, 3, 4):
        ledger.add(pid, cb(pid))
    assert ledger.exited(1, 0)
    assert ledger.stolen(2)
    ledger.foreign(70, 0, EventKind.FOREIGN)
    ledger.foreign(71, 0, EventKind.UNKNOWN)
    assert ledger.outstanding() == frozenset({1, 2, 3, 4})
    assert set(ledger.running_pids()) == {3, 4}
    assert ledger.unreaped == 2
    # Delivering an event removes its pid; foreign events never counted.
    popped = ledger.pop()
    assert popped is not None
    assert popped.pid == 1
    assert ledger.outstanding() == frozenset({2, 3, 4})
    ledger.pop()
    assert ledger.outstanding() == frozenset({3, 4})
    ledger.pop()
    ledger.pop()
    assert ledger.outstanding() == frozenset({3, 4})
    assert not ledger.has_events


def test_outstanding_is_a_snapshot() -> None:
    ledger = Ledger()
    ledger.add(1, cb())
    snap = ledger.outstanding()
    ledger.add(2, cb())
    assert snap == frozenset({1})


def test_pid_reuse_while_old_event_is_queued() -> None:
    ledger = Ledger()
    old, new = cb(1), cb(2)
    ledger.add(7, old)
    assert ledger.exited(7, 1 << 8)
    # The kernel reuses pid 7 before the old exit was delivered.
    ledger.add(7, new)
    assert ledger.is_running(7)
    assert ledger.unreaped == 1
    assert ledger.outstanding() == frozenset({7})
    assert ledger.exited(7, 2 << 8)
    first, second = ledger.pop(), ledger.pop()
    assert first == Event(EventKind.CHILD_EXIT, 7, 1 << 8, old)
    assert second == Event(EventKind.CHILD_EXIT, 7, 2 << 8, new)
    assert ledger.pop() is None
    assert ledger.outstanding() == frozenset()


def test_pid_reuse_after_stolen() -> None:
    ledger = Ledger()
    new = cb(2)
    ledger.add(7, cb(1))
    assert ledger.stolen(7)
    ledger.add(7, new)
    assert ledger.exited(7, 0)
    assert ledger.pop() == Event(EventKind.STOLEN, 7, -1, None)
    assert ledger.pop() == Event(EventKind.CHILD_EXIT, 7, 0, new)


def test_forget_running_and_discard_queue() -> None:
    ledger = Ledger()
    for pid in (5, 3, 9):
        ledger.add(pid, cb(pid))
    assert ledger.exited(3, 0)
    ledger.foreign(40, 0, EventKind.UNKNOWN)
    assert ledger.forget_running() == [5, 9]
    assert ledger.unreaped == 0
    assert ledger.forget_running() == []
    # Forgotten children are unknown now.
    assert ledger.exited(5, 0) is False
    assert ledger.stolen(9) is False
    assert ledger.outstanding() == frozenset({3})
    assert ledger.discard_queue() == 2
    assert ledger.discard_queue() == 0
    assert ledger.pop() is None
    assert ledger.outstanding() == frozenset()


def test_running_pids_in_insertion_order() -> None:
    ledger = Ledger()
    for pid in (30, 10, 20):
        ledger.add(pid, cb(pid))
    assert ledger.running_pids() == [30, 10, 20]
    pids = ledger.running_pids()
    pids.clear()  # a copy: the ledger is unaffected
    assert ledger.unreaped == 3


# -- stateful model ------------------------------------------------------------

UNKNOWN_PID = 10_000  # never added


@dataclass
class Child:
    """One child as the model sees it (a reused pid is a new Child)."""

    serial: int
    pid: int
    callback: Callback
    ended: str | None = None  # "exited" / "stolen" once it left running
    delivered: int = 0
    dropped: bool = False  # forgotten while running, or its event discarded


@dataclass
class Expected:
    kind: EventKind
    pid: int
    status: int
    child: Child | None  # None for foreign events


@dataclass
class Model:
    children: list[Child] = field(default_factory=list)
    running: dict[int, Child] = field(default_factory=dict)
    queue: list[Expected] = field(default_factory=list)
    used_pids: set[int] = field(default_factory=set)

    def outstanding(self) -> frozenset[int]:
        queued = {e.pid for e in self.queue if e.child is not None}
        return frozenset(self.running).union(queued)


statuses = st.integers(min_value=0, max_value=0xFFFF)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.model = Model()
        self.next_pid = 100
        self.next_serial = 0

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

    @rule(data=st.data(), status=statuses)
    def exited(self, data: st.DataObject, status: int) -> None:
        pid = data.draw(st.sampled_from(self._any_pid()), label="pid")
        child = self.model.running.pop(pid, None)
        assert self.ledger.exited(pid, status) is (child is not None)
        if child is not None:
            assert child.ended is None
            child.ended = "exited"
            self.model.queue.append(Expected(EventKind.CHILD_EXIT, pid, status, child))

    @rule(data=st.data())
    def stolen(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(self._any_pid()), label="pid")
        child = self.model.running.pop(pid, None)
        assert self.ledger.stolen(pid) is (child is not None)
        if child is not None:
            assert child.ended is None
            child.ended = "stolen"
            self.model.queue.append(Expected(EventKind.STOLEN, pid, -1, child))

    @rule(
        pid=st.integers(min_value=1, max_value=UNKNOWN_PID),
        status=statuses,
        kind=st.sampled_from([EventKind.FOREIGN, EventKind.UNKNOWN]),
    )
    def foreign(self, pid: int, status: int, kind: EventKind) -> None:
        self.ledger.foreign(pid, status, kind)
        self.model.queue.append(Expected(kind, pid, status, None))

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
            if expected.child is not None:
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
        assert (event.kind, event.pid, event.status) == (expected.kind, expected.pid, expected.status)
        child = expected.child
        if child is None:
            assert event.callback is None
            return
        if event.kind is EventKind.CHILD_EXIT:
            # The callback identifies the child, independently of the model's queue.
            assert event.callback is child.callback
            event.callback(event.pid, event.status)
            assert child.callback.calls == [(event.pid, event.status)]
        else:
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
        for pid in self.model.used_pids | {UNKNOWN_PID}:
            assert self.ledger.is_running(pid) == (pid in self.model.running)

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
                assert child.ended is not None

    def teardown(self) -> None:
        # Drain: every child that left running and was not dropped is delivered
        # exactly once; children never ended or dropped are never delivered.
        for _ in range(len(self.model.queue) + 1):
            self._pop_and_check()
        assert self.ledger.pop() is None
        for child in self.model.children:
            if child.ended is not None and not child.dropped:
                assert child.delivered == 1, f"child {child.serial} lost"
            if child.ended is None:
                assert child.delivered == 0
            expected_calls = 1 if child.ended == "exited" and child.delivered else 0
            assert len(child.callback.calls) == expected_calls


LedgerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestLedgerMachine = LedgerMachine.TestCase
