"""childproc._weakbag: weak members by identity, and nothing run when one dies."""

from __future__ import annotations

import gc
import sys
from typing import Any

import pytest

from childproc._weakbag import WeakBag


class Member:
    pass


def test_members_are_held_weakly_and_swept_when_read() -> None:
    bag: WeakBag[Member] = WeakBag()
    a, b = Member(), Member()
    bag.add(a)
    bag.add(b)
    bag.add(a)  # (twice: once)
    assert sorted(map(id, bag)) == sorted((id(a), id(b))) and len(bag) == 2 and bag
    del a
    gc.collect()
    assert list(bag) == [b] and len(bag._refs) == 1
    bag.discard(b)
    assert not bag and len(bag) == 0
    bag.discard(b)  # (not a member: nothing)
    bag.add(b)
    bag.clear()
    assert not bag


def test_a_member_whose_id_a_newcomer_reuses_is_replaced() -> None:
    bag: WeakBag[Member] = WeakBag()
    old = Member()
    bag.add(old)
    key = id(old)
    del old
    new = Member()
    bag._refs[id(new)] = bag._refs.pop(key)  # (as if the newcomer got the dead one's id)
    bag.add(new)
    assert list(bag) == [new]
    other = Member()
    bag.discard(other)  # (another object: the member stays)
    assert list(bag) == [new]


def test_the_bag_stays_small_with_short_lived_members() -> None:
    bag: WeakBag[Member] = WeakBag()
    keep = [Member() for _ in range(5)]
    for m in keep:
        bag.add(m)
    for _ in range(1000):
        bag.add(Member())  # (dies at once)
    assert len(bag._refs) <= 64 and len(bag) == 5


@pytest.mark.skipif(not hasattr(sys, "monitoring"), reason="counts calls with sys.monitoring (3.12+)")
def test_no_python_code_runs_when_a_member_dies() -> None:
    """A WeakSet's callback is Python code, run where the member is freed (there a
    KeyboardInterrupt is lost); a WeakBag runs none."""
    mon: Any = sys.monitoring  # type: ignore[attr-defined, unused-ignore]  # (3.12+)
    tool = mon.PROFILER_ID
    bag: WeakBag[Member] = WeakBag()
    member = Member()
    bag.add(member)
    started: list[str] = []
    mon.use_tool_id(tool, "weakbag-test")
    try:
        mon.register_callback(tool, mon.events.PY_START, lambda code, _: started.append(code.co_qualname))
        mon.set_events(tool, mon.events.PY_START)
        try:
            del member
        finally:
            mon.set_events(tool, 0)
    finally:
        mon.free_tool_id(tool)
    assert started == []
