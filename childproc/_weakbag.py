"""A set of weak references that runs no Python code when a member dies.

:class:`weakref.WeakSet` drops a dead member from a callback: Python code that
runs wherever the member happens to be freed, in whatever the interpreter was
doing then. A signal handler may run between any two bytecodes of it, and a
``KeyboardInterrupt`` raised there cannot reach anyone: CPython prints it as
"Exception ignored" and goes on, so a Ctrl-C is lost (the torture suite saw it
when a closed context was freed as a SIGINT came). A :class:`WeakBag` holds
plain weak references, with no callback, and drops the dead ones when it is
read or has grown to twice what it held at its last sweep.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["WeakBag"]

T = TypeVar("T")


class WeakBag(Generic[T]):
    """Weakly held members, by identity. Not thread-safe by itself: its users hold
    the process lock, or touch it from one thread."""

    __slots__ = ("_refs", "_sweep_at")

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref[T]] = {}  # id(member) -> a reference without a callback
        self._sweep_at = 16

    def add(self, member: T) -> None:
        if len(self._refs) >= self._sweep_at:
            self.members()  # (sweeps the dead: a bag of short-lived members stays small)
            self._sweep_at = max(16, 2 * len(self._refs))
        self._refs[id(member)] = weakref.ref(member)  # (a dead member's id may be reused: replaced)

    def discard(self, member: T) -> None:
        ref = self._refs.get(id(member))
        if ref is not None and ref() is member:
            del self._refs[id(member)]

    def members(self) -> list[T]:
        """The members alive now (and the dead ones forgotten)."""
        alive = []
        for key, ref in list(self._refs.items()):
            member = ref()
            if member is None:
                self._refs.pop(key, None)
            else:
                alive.append(member)
        return alive

    def clear(self) -> None:
        self._refs.clear()

    def __iter__(self) -> Iterator[T]:
        return iter(self.members())

    def __len__(self) -> int:
        return len(self.members())

    def __bool__(self) -> bool:
        return any(ref() is not None for ref in list(self._refs.values()))
