"""The ``events=`` argument of ``Context.fork``/``spawn``/``adopt``: :func:`check_events`."""

from __future__ import annotations

import enum
import itertools
import os
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import childproc
from childproc._child import EVENT_MASK, check_events

BITS = (os.WEXITED, os.WSTOPPED, os.WCONTINUED)


def _combinations() -> list[int]:
    """Every OR of the three event bits, 0 included."""
    values: set[int] = set()
    for n in range(len(BITS) + 1):
        for combo in itertools.combinations(BITS, n):
            value = 0
            for bit in combo:
                value |= bit
            values.add(value)
    return sorted(values)


COMBINATIONS = _combinations()
ACCEPTED = [value for value in COMBINATIONS if value & os.WEXITED]
NO_EXIT = [value for value in COMBINATIONS if not value & os.WEXITED]


def test_the_event_bits_are_distinct_and_form_the_mask() -> None:
    assert len(set(BITS)) == 3
    assert all(bin(bit).count("1") == 1 for bit in BITS)
    assert EVENT_MASK == os.WEXITED | os.WSTOPPED | os.WCONTINUED
    assert len(COMBINATIONS) == 8
    assert len(ACCEPTED) == 4


def test_wexited_with_any_of_the_others_is_accepted() -> None:
    for events in ACCEPTED:
        assert check_events(events) == events


def test_the_named_combinations() -> None:
    assert check_events(os.WEXITED) == os.WEXITED
    assert check_events(os.WEXITED | os.WSTOPPED) == os.WEXITED | os.WSTOPPED
    assert check_events(os.WEXITED | os.WCONTINUED) == os.WEXITED | os.WCONTINUED
    assert check_events(EVENT_MASK) == EVENT_MASK
    # WUNTRACED is waitpid's spelling of WSTOPPED (the same bit on Linux).
    if os.WUNTRACED == os.WSTOPPED:
        assert check_events(os.WEXITED | os.WUNTRACED) == os.WEXITED | os.WSTOPPED


def test_without_wexited_is_rejected() -> None:
    # The exit is always reported: an events= without it is a mistake.
    for events in NO_EXIT:
        with pytest.raises(childproc.InvalidArgumentError, match="WEXITED"):
            check_events(events)


def test_extra_bits_are_rejected() -> None:
    for extra in (os.WNOHANG, os.WNOWAIT, 1 << 20, 1 << 31, 1 << 64, -1, -os.WEXITED):
        for events in (extra, os.WEXITED | extra, EVENT_MASK | extra):
            assert events & ~EVENT_MASK  # a bit outside the mask (negative ints have infinitely many)
            with pytest.raises(childproc.InvalidArgumentError):
                check_events(events)


@given(events=st.integers(min_value=-(2**70), max_value=2**70))
@settings(max_examples=300, deadline=None)
def test_any_int_is_accepted_iff_wexited_and_nothing_else(events: int) -> None:
    valid = events & ~EVENT_MASK == 0 and bool(events & os.WEXITED)
    if valid:
        assert check_events(events) == events
    else:
        with pytest.raises(childproc.InvalidArgumentError):
            check_events(events)


NOT_INTS: list[object] = [
    True,
    False,
    None,
    float(os.WEXITED),
    str(os.WEXITED),
    b"\x04",
    Fraction(os.WEXITED),
    [os.WEXITED],
    {os.WEXITED},
    (os.WEXITED, os.WSTOPPED),
    object(),
]


def test_non_ints_and_bools_are_rejected() -> None:
    for events in NOT_INTS:
        with pytest.raises(childproc.InvalidArgumentError):
            check_events(events)


def test_the_error_is_a_value_error_and_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"events must be os\.WEXITED") as info:
        check_events(os.WSTOPPED)
    assert isinstance(info.value, childproc.InvalidArgumentError)
    assert isinstance(info.value, childproc.ChildprocError)
    assert repr(os.WSTOPPED) in str(info.value)


class Flags(enum.IntFlag):
    EXITED = os.WEXITED
    STOPPED = os.WSTOPPED
    NOHANG = os.WNOHANG


def test_int_subclasses_are_checked_by_value() -> None:
    assert check_events(Flags.EXITED | Flags.STOPPED) == os.WEXITED | os.WSTOPPED
    with pytest.raises(childproc.InvalidArgumentError):
        check_events(Flags.STOPPED)
    with pytest.raises(childproc.InvalidArgumentError):
        check_events(Flags.EXITED | Flags.NOHANG)
