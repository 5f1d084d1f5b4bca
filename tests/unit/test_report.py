"""``childproc._report.findings_for``: the doctor's traps from facts alone (no /proc)."""

from __future__ import annotations

from typing import Any

import pytest

from childproc._report import HELD_BY_A_PIDFD, ChildInfo, SigchldInfo, ThreadInfo, findings_for

DEFAULT = SigchldInfo("default", None, False, "nobody")


def traps(**facts: Any) -> dict[str, str]:
    given: dict[str, Any] = {
        "sigchld": DEFAULT,
        "threads": (ThreadInfo(1, "main", False, False),),
        "children": (),
        "pidfds": True,
        "nofile": 65536,
        "trees_why": None,
        "reapers": (),
        "modes": (),
    }
    given.update(facts)
    sigchld, threads, children = given.pop("sigchld"), given.pop("threads"), given.pop("children")
    return {f.trap: f.message for f in findings_for(sigchld, threads, children, **given)}


BLOCKED = (ThreadInfo(1, "main", True, False), ThreadInfo(2, "worker", True, False))


@pytest.mark.parametrize(
    ("modes", "pidfds", "expected"),
    [
        (("PIDFD",), True, False),  # pidfds need no signal
        (("SELECTIVE_REAP", "PIDFD"), True, False),
        (("SELECTIVE_REAP",), False, True),  # without pidfds it scans on SIGCHLD
        (("PIDFD", "LIBXL"), True, True),
        ((), True, True),  # no context yet: a fact worth saying
        (None, True, True),  # another process (from /proc)
    ],
)
def test_sigchld_blocked_everywhere_matters_only_to_a_signal(
    modes: tuple[str, ...] | None, pidfds: bool, expected: bool
) -> None:
    assert ("sigchld-blocked" in traps(threads=BLOCKED, modes=modes, pidfds=pidfds)) is expected


def test_a_thread_waiting_for_any_child_is_a_trap_beside_contexts_that_reap_their_own() -> None:
    waiting = (ThreadInfo(1, "main", False, False), ThreadInfo(7, "reaper", False, True))
    found = traps(threads=waiting, modes=("SELECTIVE_REAP", "PIDFD"))
    assert "7" in found["reaper-thread"] and "PIDFD or SELECTIVE_REAP" in found["reaper-thread"]
    assert "reaper-thread" not in traps(threads=waiting, modes=("MAINLOOP",))  # (the host reaps)
    assert "reaper-thread" not in traps(threads=waiting, modes=())
    assert "reaper-thread" not in traps(threads=waiting, modes=None)


def test_zombies_held_by_a_pidfd_are_not_unreaped_and_long_lists_say_so() -> None:
    zombies = tuple(ChildInfo(100 + i, "Z", "true", "unknown", 1) for i in range(12))
    held = (ChildInfo(99, "Z", "true", HELD_BY_A_PIDFD, 1),)
    found = traps(children=held + zombies, modes=None)
    assert "99" not in found["unreaped-zombies"] and "109, ..." in found["unreaped-zombies"]
    assert "unreaped-zombies" not in traps(children=held, modes=None)
