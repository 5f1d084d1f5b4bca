"""A child's life, as a table: the states it passes through and what moves it.

Rules of this file
------------------
* Pure: no OS calls, no locks, no I/O. The context holds the process lock
  around every change of a child's state and makes each one through
  :func:`advance`, which refuses a move the table does not list.
* Every state of a child and every legal move is in :data:`TRANSITIONS`; the
  documentation's lifecycle diagram is generated from it (``docs/conf.py``).
* Moves that the context may make a second time after an interruption (a
  ``KeyboardInterrupt`` between recording a reap and finishing its
  bookkeeping) are listed as loops (``EXITED --reaped--> EXITED``): replaying a
  journal entry is then a no-op, never an error or a second event.

Theory of operation
-------------------
A child starts ``RUNNING``. While it lives it may be ``STOPPED`` and continued
(only children that asked for those events, through SIGCHLD). Its death is seen
in one of three ways:

* **reaped** (``waitid`` without ``WNOWAIT``): the status is known and the pid
  is free again: ``EXITED``;
* **peeked** (``waitid(WNOWAIT)``, for ``reap_after_callback``): the status is
  known and the child is still a zombie, its pid still reserved:
  ``EXIT_SEEN``; it is reaped once its exit was delivered (``REAP_DUE``, then
  ``DELIVERED``);
* **gone** (``ECHILD``): someone else reaped it, or the kernel discarded its
  status because SIGCHLD was ignored: ``LOST``.

Each of ``EXITED`` and ``LOST`` produces exactly one event for delivery, and
delivering it makes the child ``DELIVERED``. The owner may give a child up
(``release``) or close its context (``abandon``): a child whose exit was not
seen yet is then ``ORPHANED`` (the process-wide orphanage reaps it, no callback
runs); one whose exit was seen is ``RELEASED``.

Only an unreaped child may be signalled by pid (its pid cannot be reused while
it is a zombie): :data:`SIGNALLABLE`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

__all__ = [
    "Phase",
    "Move",
    "IllegalMove",
    "TRANSITIONS",
    "OUTSTANDING",
    "SIGNALLABLE",
    "UNREAPED",
    "FINISHED",
    "advance",
]


class Phase(enum.Enum):
    """Where a child is, as far as its context has observed."""

    RUNNING = "running"
    STOPPED = "stopped"
    EXIT_SEEN = "exit seen, still a zombie"
    EXITED = "exited, exit not delivered yet"
    LOST = "reaped by someone else, loss not reported yet"
    REAP_DUE = "exit delivered, zombie to reap"
    DELIVERED = "exit delivered"
    RELEASED = "released: no more callbacks"
    ORPHANED = "context closed while it ran: reaped without callbacks"

    # Members are singletons: hash by identity, in C (Enum's own __hash__ is Python
    # code, and the table is looked up on every child's path).
    __hash__ = object.__hash__


class Move(enum.Enum):
    """What happened to a child."""

    STOP = "stopped"
    CONTINUE = "continued"
    PEEK = "exit seen (WNOWAIT)"
    REAP = "reaped"
    GONE = "ECHILD"
    DELIVER = "exit delivered"
    RELEASE = "released"
    ABANDON = "context closed"

    __hash__ = object.__hash__  # (as Phase's)


class IllegalMove(Exception):
    """A move the table does not allow: a bug in childproc, never the user's."""


_P = Phase
_M = Move

#: (state, move) -> next state. Anything not listed is illegal.
TRANSITIONS: Final[Mapping[tuple[Phase, Move], Phase]] = {
    (_P.RUNNING, _M.STOP): _P.STOPPED,
    (_P.RUNNING, _M.CONTINUE): _P.RUNNING,
    (_P.RUNNING, _M.PEEK): _P.EXIT_SEEN,
    (_P.RUNNING, _M.REAP): _P.EXITED,
    (_P.RUNNING, _M.GONE): _P.LOST,
    (_P.RUNNING, _M.RELEASE): _P.RELEASED,
    (_P.RUNNING, _M.ABANDON): _P.ORPHANED,
    (_P.STOPPED, _M.STOP): _P.STOPPED,
    (_P.STOPPED, _M.CONTINUE): _P.RUNNING,
    (_P.STOPPED, _M.PEEK): _P.EXIT_SEEN,
    (_P.STOPPED, _M.REAP): _P.EXITED,
    (_P.STOPPED, _M.GONE): _P.LOST,
    (_P.STOPPED, _M.RELEASE): _P.RELEASED,
    (_P.STOPPED, _M.ABANDON): _P.ORPHANED,
    # A zombie whose exit was peeked at: its status is known, so losing the
    # zombie to someone else's reap loses nothing.
    (_P.EXIT_SEEN, _M.PEEK): _P.EXIT_SEEN,
    (_P.EXIT_SEEN, _M.REAP): _P.EXIT_SEEN,
    (_P.EXIT_SEEN, _M.GONE): _P.EXIT_SEEN,
    (_P.EXIT_SEEN, _M.DELIVER): _P.REAP_DUE,
    (_P.EXIT_SEEN, _M.RELEASE): _P.RELEASED,
    (_P.EXIT_SEEN, _M.ABANDON): _P.RELEASED,
    # Replays after an interruption: the first record stands.
    (_P.EXITED, _M.REAP): _P.EXITED,
    (_P.EXITED, _M.GONE): _P.EXITED,
    (_P.EXITED, _M.DELIVER): _P.DELIVERED,
    (_P.EXITED, _M.RELEASE): _P.RELEASED,
    (_P.EXITED, _M.ABANDON): _P.RELEASED,
    (_P.LOST, _M.GONE): _P.LOST,
    (_P.LOST, _M.DELIVER): _P.DELIVERED,
    (_P.LOST, _M.RELEASE): _P.RELEASED,
    (_P.LOST, _M.ABANDON): _P.RELEASED,
    (_P.REAP_DUE, _M.REAP): _P.DELIVERED,
    (_P.REAP_DUE, _M.GONE): _P.DELIVERED,
    (_P.REAP_DUE, _M.RELEASE): _P.DELIVERED,
    (_P.REAP_DUE, _M.ABANDON): _P.DELIVERED,
    # Terminal states absorb late news (a release after delivery, a close).
    (_P.DELIVERED, _M.RELEASE): _P.DELIVERED,
    (_P.DELIVERED, _M.ABANDON): _P.DELIVERED,
    (_P.RELEASED, _M.RELEASE): _P.RELEASED,
    (_P.RELEASED, _M.ABANDON): _P.RELEASED,
    (_P.ORPHANED, _M.RELEASE): _P.ORPHANED,
    (_P.ORPHANED, _M.ABANDON): _P.ORPHANED,
}

#: Exit not delivered yet (and the child not given up): ``Context.children``.
OUTSTANDING: Final = frozenset({_P.RUNNING, _P.STOPPED, _P.EXIT_SEEN, _P.EXITED, _P.LOST})
#: Not reaped and exit not seen: the pid is still the child's, signals may go to it.
SIGNALLABLE: Final = frozenset({_P.RUNNING, _P.STOPPED})
#: Not reaped yet by anyone (a zombie's pid and group id are still reserved).
UNREAPED: Final = frozenset({_P.RUNNING, _P.STOPPED, _P.EXIT_SEEN, _P.REAP_DUE})
#: Nothing more will be reported for the child.
FINISHED: Final = frozenset({_P.REAP_DUE, _P.DELIVERED, _P.RELEASED, _P.ORPHANED})


def advance(phase: Phase, move: Move) -> Phase:
    """The state after ``move``; raises :class:`IllegalMove` if the table has no such move."""
    try:
        return TRANSITIONS[(phase, move)]
    except KeyError:
        raise IllegalMove(f"a child in state {phase.name} cannot be {move.value}") from None
