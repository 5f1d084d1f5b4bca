"""The lifecycle table of :mod:`childproc._lifecycle`: every move, legal or not, and its laws."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from childproc._lifecycle import (
    FINISHED,
    OUTSTANDING,
    SIGNALLABLE,
    TRANSITIONS,
    UNREAPED,
    IllegalMove,
    Move,
    Phase,
    advance,
)

P = Phase
M = Move

#: An independent copy of the table: a change to TRANSITIONS must be made here too, on purpose.
EXPECTED: dict[tuple[Phase, Move], Phase] = {
    (P.RUNNING, M.STOP): P.STOPPED,
    (P.RUNNING, M.CONTINUE): P.RUNNING,
    (P.RUNNING, M.PEEK): P.EXIT_SEEN,
    (P.RUNNING, M.REAP): P.EXITED,
    (P.RUNNING, M.GONE): P.LOST,
    (P.RUNNING, M.RELEASE): P.RELEASED,
    (P.RUNNING, M.ABANDON): P.ORPHANED,
    (P.STOPPED, M.STOP): P.STOPPED,
    (P.STOPPED, M.CONTINUE): P.RUNNING,
    (P.STOPPED, M.PEEK): P.EXIT_SEEN,
    (P.STOPPED, M.REAP): P.EXITED,
    (P.STOPPED, M.GONE): P.LOST,
    (P.STOPPED, M.RELEASE): P.RELEASED,
    (P.STOPPED, M.ABANDON): P.ORPHANED,
    (P.EXIT_SEEN, M.PEEK): P.EXIT_SEEN,
    (P.EXIT_SEEN, M.REAP): P.EXIT_SEEN,
    (P.EXIT_SEEN, M.GONE): P.EXIT_SEEN,
    (P.EXIT_SEEN, M.DELIVER): P.REAP_DUE,
    (P.EXIT_SEEN, M.RELEASE): P.RELEASED,
    (P.EXIT_SEEN, M.ABANDON): P.RELEASED,
    (P.EXITED, M.REAP): P.EXITED,
    (P.EXITED, M.GONE): P.EXITED,
    (P.EXITED, M.DELIVER): P.DELIVERED,
    (P.EXITED, M.RELEASE): P.RELEASED,
    (P.EXITED, M.ABANDON): P.RELEASED,
    (P.LOST, M.GONE): P.LOST,
    (P.LOST, M.DELIVER): P.DELIVERED,
    (P.LOST, M.RELEASE): P.RELEASED,
    (P.LOST, M.ABANDON): P.RELEASED,
    (P.REAP_DUE, M.REAP): P.DELIVERED,
    (P.REAP_DUE, M.GONE): P.DELIVERED,
    (P.REAP_DUE, M.RELEASE): P.DELIVERED,
    (P.REAP_DUE, M.ABANDON): P.DELIVERED,
    (P.DELIVERED, M.RELEASE): P.DELIVERED,
    (P.DELIVERED, M.ABANDON): P.DELIVERED,
    (P.RELEASED, M.RELEASE): P.RELEASED,
    (P.RELEASED, M.ABANDON): P.RELEASED,
    (P.ORPHANED, M.RELEASE): P.ORPHANED,
    (P.ORPHANED, M.ABANDON): P.ORPHANED,
}

ALL_PAIRS = list(itertools.product(Phase, Move))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in EXPECTED]
LIVING = frozenset({P.RUNNING, P.STOPPED})
EXIT_SEEN_PHASES = frozenset({P.EXITED, P.LOST, P.EXIT_SEEN})


def _id(value: object) -> str:
    if isinstance(value, tuple):
        return "-".join(_id(v) for v in value)
    return value.name if isinstance(value, (Phase, Move)) else repr(value)


# -- the table ---------------------------------------------------------------------


def test_the_table_is_the_expected_one() -> None:
    assert dict(TRANSITIONS) == EXPECTED


@pytest.mark.parametrize(("pair", "after"), list(EXPECTED.items()), ids=_id)
def test_every_listed_move(pair: tuple[Phase, Move], after: Phase) -> None:
    phase, move = pair
    assert advance(phase, move) is after


@pytest.mark.parametrize("pair", ILLEGAL, ids=_id)
def test_every_unlisted_move_is_illegal(pair: tuple[Phase, Move]) -> None:
    phase, move = pair
    with pytest.raises(IllegalMove) as info:
        advance(phase, move)
    assert phase.name in str(info.value)
    assert move.value in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__  # `from None`: no KeyError in the report


def test_illegal_move_is_not_a_lookup_error() -> None:
    # A caller catching KeyError (a dict miss) must not swallow a broken move.
    assert not issubclass(IllegalMove, LookupError)


def test_every_phase_and_move_appears_in_the_table() -> None:
    # The docs' diagram is generated from TRANSITIONS: a phase missing from it would be missing there.
    keys = {phase for phase, _ in TRANSITIONS}
    values = set(TRANSITIONS.values())
    for phase in Phase:
        assert phase in keys or phase in values, phase
    assert {move for _, move in TRANSITIONS} == set(Move)


def test_every_phase_has_a_way_out_and_can_be_given_up() -> None:
    # A release or a close is legal in every phase: giving a child up never raises.
    for phase in Phase:
        assert (phase, Move.RELEASE) in TRANSITIONS
        assert (phase, Move.ABANDON) in TRANSITIONS
        assert advance(phase, Move.RELEASE) in FINISHED or advance(phase, Move.RELEASE) is phase


def test_every_phase_is_reachable_from_running() -> None:
    seen = {Phase.RUNNING}
    frontier = [Phase.RUNNING]
    while frontier:
        phase = frontier.pop()
        for (before, _), after in TRANSITIONS.items():
            if before is phase and after not in seen:
                seen.add(after)
                frontier.append(after)
    assert seen == set(Phase)


def test_every_phase_can_finish() -> None:
    for start in Phase:
        seen = {start}
        frontier = [start]
        while frontier:
            phase = frontier.pop()
            for (before, _), after in TRANSITIONS.items():
                if before is phase and after not in seen:
                    seen.add(after)
                    frontier.append(after)
        assert seen & FINISHED, start


def test_deliver_only_where_an_exit_is_queued() -> None:
    assert {phase for phase, move in TRANSITIONS if move is Move.DELIVER} == EXIT_SEEN_PHASES
    for phase in EXIT_SEEN_PHASES:
        assert advance(phase, Move.DELIVER) in FINISHED


def test_only_living_children_stop_or_continue() -> None:
    assert {phase for phase, move in TRANSITIONS if move in (Move.STOP, Move.CONTINUE)} == LIVING
    for phase in LIVING:
        assert advance(phase, Move.STOP) is Phase.STOPPED
        assert advance(phase, Move.CONTINUE) is Phase.RUNNING


def test_replays_are_loops() -> None:
    # What the context may apply twice after an interruption changes nothing the second time.
    for phase, move in [(P.RUNNING, M.REAP), (P.RUNNING, M.GONE), (P.RUNNING, M.PEEK)]:
        once = advance(phase, move)
        assert advance(once, move) is once
    # Another report of the same death after the first one was recorded: the first stands.
    assert advance(P.EXITED, M.GONE) is P.EXITED
    assert advance(P.EXIT_SEEN, M.REAP) is P.EXIT_SEEN
    assert advance(P.EXIT_SEEN, M.GONE) is P.EXIT_SEEN


# -- the phase sets -------------------------------------------------------------------


def test_phase_sets() -> None:
    assert frozenset({P.RUNNING, P.STOPPED, P.EXIT_SEEN, P.EXITED, P.LOST}) == OUTSTANDING
    assert frozenset({P.RUNNING, P.STOPPED}) == SIGNALLABLE
    assert frozenset({P.RUNNING, P.STOPPED, P.EXIT_SEEN, P.REAP_DUE}) == UNREAPED
    assert frozenset({P.REAP_DUE, P.DELIVERED, P.RELEASED, P.ORPHANED}) == FINISHED
    for phases in (OUTSTANDING, SIGNALLABLE, UNREAPED, FINISHED):
        assert isinstance(phases, frozenset)


def test_signallable_is_unreaped() -> None:
    assert SIGNALLABLE < UNREAPED


def test_outstanding_and_finished_partition_the_phases() -> None:
    assert not OUTSTANDING & FINISHED
    assert set(Phase) == OUTSTANDING | FINISHED


def test_finished_phases_are_absorbing() -> None:
    for (phase, move), after in TRANSITIONS.items():
        if phase in FINISHED:
            assert after is phase or (phase, after) == (P.REAP_DUE, P.DELIVERED), (phase, move)


# -- random walks ----------------------------------------------------------------------


def legal_moves(phase: Phase) -> list[Move]:
    return [move for move in Move if (phase, move) in TRANSITIONS]


class LifecycleMachine(RuleBasedStateMachine):
    """One child walked through random legal moves (and refused illegal ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = Phase.RUNNING
        self.history: list[tuple[Phase, Move, Phase]] = []
        self.exits_reported = 0
        self.left_living = False

    @rule(data=st.data())
    def legal(self, data: st.DataObject) -> None:
        moves = legal_moves(self.phase)
        assert moves, f"{self.phase} is a dead end"
        move = data.draw(st.sampled_from(moves), label="move")
        before = self.phase
        after = advance(before, move)
        if before in FINISHED:
            assert after is before or (before, after) == (P.REAP_DUE, P.DELIVERED), (before, move, after)
            assert after in FINISHED
        if before in LIVING and after in EXIT_SEEN_PHASES:
            self.exits_reported += 1
        if before in LIVING and after not in LIVING:
            self.left_living = True
        if self.left_living:
            assert after not in LIVING, "a dead child came back to life"
        if before not in UNREAPED:
            assert after not in UNREAPED, "a reaped child became a zombie again"
        self.history.append((before, move, after))
        self.phase = after

    @rule(data=st.data())
    def illegal(self, data: st.DataObject) -> None:
        moves = [move for move in Move if (self.phase, move) not in TRANSITIONS]
        if not moves:
            return
        move = data.draw(st.sampled_from(moves), label="illegal move")
        with pytest.raises(IllegalMove):
            advance(self.phase, move)

    @invariant()
    def an_exit_is_reported_at_most_once(self) -> None:
        assert self.exits_reported <= 1, self.history

    @invariant()
    def phase_sets_hold(self) -> None:
        assert SIGNALLABLE <= UNREAPED
        assert not OUTSTANDING & FINISHED
        assert (self.phase in OUTSTANDING) != (self.phase in FINISHED)

    @invariant()
    def signallable_only_while_living(self) -> None:
        assert (self.phase in SIGNALLABLE) == (not self.left_living)


LifecycleMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
TestLifecycleMachine = LifecycleMachine.TestCase
