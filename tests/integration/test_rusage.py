"""What a child cost: the final event's ``rusage`` in every mode that reaps (from
``wait4``/``wait3``), the host's in MAINLOOP, and a cgroup tree's CPU time."""

from __future__ import annotations

import os
import sys

import pytest

import childproc
from childproc import ChildEvent, Context, EventCode, InvalidArgumentError, SigchldOwner, _cgroup

REAPING = [SigchldOwner.SELECTIVE_REAP, SigchldOwner.PIDFD, SigchldOwner.LIBXL, SigchldOwner.LIBXL_ALWAYS]
BURN = "x = 0\nfor i in range(3_000_000): x += i\nb = bytearray(300 << 20)\nb[::4096] = b'1' * len(b[::4096])"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", REAPING, ids=[m.name for m in REAPING])
@pytest.mark.parametrize("how", ["spawn", "fork"])
def test_the_final_event_says_what_the_child_used(mode: SigchldOwner, how: str) -> None:
    with Context(mode) as ctx:
        if how == "spawn":
            child = ctx.spawn([sys.executable, "-c", BURN])
        else:
            forked = ctx.fork()
            if forked is None:
                os.execv(sys.executable, [sys.executable, "-c", BURN])
            child = forked
        event = child.wait(50)
    assert event is not None and event.returncode == 0
    assert event.rusage is not None
    assert event.rusage.ru_utime > 0.05  # the loop
    assert event.rusage.ru_maxrss >= 300 << 10  # KiB: the 300 MiB it touched


@pytest.mark.timeout(30)
def test_mainloop_takes_the_hosts_rusage() -> None:
    with Context(SigchldOwner.MAINLOOP) as ctx:
        child = ctx.spawn(["true"])
        pid, status, rusage = os.wait4(child.pid, 0)
        with pytest.raises(InvalidArgumentError, match="rusage must be"):
            ctx.childproc_reaped(pid, status, rusage="lots")  # type: ignore[arg-type]
        assert ctx.childproc_reaped(pid, status, rusage)
        assert child.final is not None and child.final.rusage is rusage
        other = ctx.spawn(["true"])
        pid, status = os.waitpid(other.pid, 0)
        assert ctx.childproc_reaped(pid, status)
        assert other.final is not None and other.final.rusage is None  # the host did not say


@pytest.mark.timeout(30)
def test_reap_after_callback_has_no_rusage_yet() -> None:
    """The callback runs while the child is a zombie: nothing has reaped it, so the
    kernel has not handed its usage over (documented)."""
    seen: list[ChildEvent] = []
    with Context(SigchldOwner.SELECTIVE_REAP) as ctx:
        child = ctx.spawn(["true"], lambda c, e: seen.append(e), reap_after_callback=True)
        child.wait(10)
    assert len(seen) == 1 and seen[0].rusage is None


def test_rusage_takes_no_part_in_equality_or_repr() -> None:
    usage = os.wait4(os.posix_spawn("/bin/true", ["true"], os.environ), 0)[2]
    with_usage = ChildEvent(5, EventCode.EXITED, 0, None, usage)
    assert with_usage == ChildEvent(5, EventCode.EXITED, 0) and "rusage" not in repr(with_usage)
    assert ChildEvent.from_wait_status(5, 0, None, usage).rusage is usage


@pytest.mark.timeout(30)
@pytest.mark.skipif(_cgroup.home() is None, reason="no cgroups here")
def test_a_trees_cpu_time_counts_descendants_and_outlives_its_cgroup() -> None:
    """A descendant the child never waited for is in the tree's CPU time (and not in
    the child's own rusage, which counts only what it reaped), and the figure is
    still there once the tree's cgroup is gone."""
    loop = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"
    with Context() as ctx:
        child = ctx.spawn(["sh", "-c", f"({loop}) &"], kill_tree=True)
        event = child.wait(20)
        assert event is not None and event.rusage is not None
        tree = child._tree
        assert isinstance(tree, _cgroup.CgroupTree)
        assert tree.wait_empty(20)  # the loop, after its parent exited
    assert tree.removed  # (the close removed it, once empty)
    assert event.tree_cpu_times is not None  # (at the exit: the loop had only started)
    user, system = child.tree_cpu_times()
    assert user + system >= sum(event.tree_cpu_times)
    assert user + system > event.rusage.ru_utime + event.rusage.ru_stime + 0.05
    assert childproc.tree_guarantee() == "cgroup"
