"""The process-group fallback of ``kill_tree=True`` and ``PR_SET_CHILD_SUBREAPER``: in
LIBXL_ALWAYS (the mode that reaps every child of the process) a process-group tree makes
the process a subreaper, so the tree's orphans come back and are reaped here; in every
other mode the mark is never set, and a host's own mark is never cleared. Real
processes; the leak check fails a test that leaves the mark set."""

from __future__ import annotations

import logging
import os
import signal

import pytest

import childproc
from childproc import Context, Hooks, SigchldOwner
from childproc._subreaper import SUBREAPER, _set, is_subreaper

from .procutil import alive, children, stat_fields, wait_until

#: Starts an escapee (setsid) in the background, prints its pid and exits: the escapee
#: is orphaned at once.
_ORPHAN_MAKER = "setsid sleep 30 </dev/null >/dev/null 2>&1 & echo $!"


def _ppid(pid: int) -> int:
    return int(stat_fields(pid)[1])


def _orphan_of(ctx: Context) -> int:
    """Spawn the orphan maker as a process-group tree; its escapee's pid, once its
    parent has exited and been delivered, and the escapee has left the tree's group
    (until its ``setsid()`` it is still a member, and would be the tree's)."""
    child = ctx.spawn(["sh", "-c", _ORPHAN_MAKER], stdout=childproc.PIPE, kill_tree="process-group")
    assert child.tree_guarantee == "process-group"
    out, _ = child.communicate(timeout=10)
    assert child.returncode == 0
    orphan = int(out.split()[0])
    assert wait_until(lambda: stat_fields(orphan)[3] == str(orphan), timeout=10)  # its own session
    return orphan


def _started_tree(
    ctx: Context, jobs: int = 2, *, trap_term: bool = False, **options: object
) -> childproc.Child:
    """A process-group tree: a shell with ``jobs`` background sleeps in its group,
    returned once they all started (its stdout closed)."""
    script = (
        "trap '' TERM; " if trap_term else ""
    ) + f"for i in $(seq {jobs}); do sleep 30 & done; echo started; wait"
    child = ctx.spawn(["sh", "-c", script], stdout=childproc.PIPE, kill_tree="process-group", **options)  # type: ignore[arg-type]
    assert child.stdout is not None and child.stdout.readline() == b"started\n"
    child.stdout.close()
    return child


@pytest.mark.timeout(30)
def test_libxl_always_brings_a_trees_orphans_back_and_reaps_them(caplog: pytest.LogCaptureFixture) -> None:
    reaped: list[tuple[int, int]] = []

    def reaped_callback(pid: int, status: int, user: object) -> bool:
        reaped.append((pid, status))
        return False  # (not the host's: childproc warns)

    assert is_subreaper() is False
    ctx = Context(hooks=Hooks(chldowner=SigchldOwner.LIBXL_ALWAYS, reaped_callback=reaped_callback))
    try:
        assert is_subreaper() is False  # not before a process-group tree
        orphan = _orphan_of(ctx)
        assert SUBREAPER.held and is_subreaper() is True
        assert wait_until(lambda: _ppid(orphan) == os.getpid(), timeout=5)  # came back here
        assert "yes (childproc" in str(childproc.doctor()).split("subreaper")[1].splitlines()[0]
        os.kill(orphan, signal.SIGKILL)
        with caplog.at_level(logging.WARNING, logger="childproc"):
            assert wait_until(lambda: ctx.wait(0.2) >= 0 and bool(reaped), timeout=10)
        assert reaped == [(orphan, signal.SIGKILL)]  # reaped here, once, with its status
        assert f"unknown child [{orphan}]" in caplog.text and "subreaper" in caplog.text
        assert orphan not in children()
    finally:
        ctx.close()
    assert is_subreaper() is False and not SUBREAPER.held  # let go at close


@pytest.mark.timeout(30)
def test_leaving_libxl_always_lets_the_mark_go() -> None:
    with Context(SigchldOwner.LIBXL_ALWAYS) as ctx:
        child = ctx.spawn(["true"], kill_tree="process-group")
        assert is_subreaper() is True
        assert child.wait(10) is not None
        ctx.setmode(Hooks(chldowner=SigchldOwner.SELECTIVE_REAP))
        assert is_subreaper() is False
        ctx.spawn(["true"], kill_tree="process-group").wait(10)
        assert is_subreaper() is False  # SELECTIVE_REAP never sets it


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "mode", [SigchldOwner.SELECTIVE_REAP, SigchldOwner.PIDFD, SigchldOwner.LIBXL], ids=lambda m: m.name
)
def test_other_modes_leave_orphans_to_init(mode: SigchldOwner) -> None:
    """Where nothing would reap an orphan that came back (or not for the context's whole
    life), the process is never made a subreaper: a tree's orphan goes where it would
    without childproc."""
    with Context(mode) as ctx:
        orphan = _orphan_of(ctx)
        pidfd = os.pidfd_open(orphan)
        try:
            assert is_subreaper() is False and not SUBREAPER.held
            assert wait_until(lambda: _ppid(orphan) != os.getpid(), timeout=5)
            assert orphan not in children()
        finally:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)


@pytest.mark.timeout(30)
def test_a_host_that_is_a_subreaper_already_stays_one() -> None:
    assert _set(True)
    try:
        with Context(SigchldOwner.LIBXL_ALWAYS) as ctx:
            ctx.spawn(["true"], kill_tree="process-group").wait(10)
            assert is_subreaper() is True and not SUBREAPER.held  # (the host's mark, not childproc's)
            assert "yes (not childproc)" in str(childproc.doctor())
        assert is_subreaper() is True  # not cleared: childproc did not set it
    finally:
        _set(False)


@pytest.mark.timeout(30)
def test_a_forked_child_holds_no_mark() -> None:
    """The kernel does not pass the mark to a forked child; nor does childproc's record."""
    with Context(SigchldOwner.LIBXL_ALWAYS) as ctx:
        ctx.spawn(["true"], kill_tree="process-group").wait(10)
        assert SUBREAPER.held
        forked = ctx.fork()
        if forked is None:
            os._exit(0 if not SUBREAPER.held and is_subreaper() is False else 1)
        event = forked.wait(10)
        assert event is not None and event.returncode == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["close", "release"])
def test_a_killed_tree_leaves_nothing_that_came_back(how: str) -> None:
    """kill_on_close kills the group; its members come back (the leader dies first)
    and are reaped before the mark goes: no zombie is left, and a new LIBXL_ALWAYS
    context finds no foreign child."""
    ctx = Context(SigchldOwner.LIBXL_ALWAYS)
    try:
        child = _started_tree(ctx, kill_on_close=True)
        if how == "release":
            child.release()
            assert not children()
    finally:
        ctx.close()
    assert not children()
    assert is_subreaper() is False
    with Context(SigchldOwner.LIBXL_ALWAYS):
        pass  # (would refuse: "children no context made")


@pytest.mark.timeout(30)
def test_two_holders_the_mark_goes_with_the_last() -> None:
    a = Context(SigchldOwner.LIBXL_ALWAYS)
    try:
        b = Context(SigchldOwner.LIBXL_ALWAYS)
        try:
            a.spawn(["true"], kill_tree="process-group").wait(10)
            b.spawn(["true"], kill_tree="process-group").wait(10)
        finally:
            b.close()
        assert is_subreaper() is True and SUBREAPER.held  # a still holds it
    finally:
        a.close()
    assert is_subreaper() is False and not SUBREAPER.held


class _Interrupt(BaseException):
    pass


@pytest.mark.timeout(30)
@pytest.mark.parametrize("at", [1, 2, 3])
def test_an_interrupted_hold_or_release_is_mended_by_the_next(
    monkeypatch: pytest.MonkeyPatch, at: int
) -> None:
    """An exception a signal handler raises may land between any two steps of hold()
    and release() (the prctl, and the record): the next call puts the mark where the
    record says, and the mark never outlives the last holder."""
    from childproc import _subreaper  # noqa: PLC0415

    calls = [0]
    real = _subreaper._set

    def interrupted(on: bool) -> bool:
        calls[0] += 1
        result = real(on)
        if calls[0] == at:
            raise _Interrupt  # (after the kernel changed the mark, before the record knows)
        return result

    holder = object.__new__(Context)  # (any weak-referenceable object)
    monkeypatch.setattr(_subreaper, "_set", interrupted)
    for step in (SUBREAPER.hold, SUBREAPER.release, SUBREAPER.hold, SUBREAPER.release):
        try:
            step(holder)
        except _Interrupt:
            pass
    SUBREAPER.hold(holder)
    assert is_subreaper() is True and SUBREAPER.held
    SUBREAPER.release(holder)
    assert is_subreaper() is False and not SUBREAPER.held


@pytest.mark.timeout(30)
@pytest.mark.parametrize("with_callback", [False, True], ids=["warning", "reaped_callback"])
def test_a_killed_trees_members_are_the_trees_not_the_hosts(
    caplog: pytest.LogCaptureFixture, with_callback: bool
) -> None:
    """kill_tree() on a process-group tree: its members come back here as they die, and
    each is seen in the tree's group before it is reaped, so none reaches the host's
    reaped_callback or the "unknown child" warning."""
    reaped: list[int] = []
    hooks = Hooks(
        chldowner=SigchldOwner.LIBXL_ALWAYS,
        reaped_callback=(lambda pid, status, user: reaped.append(pid)) if with_callback else None,
    )
    with caplog.at_level(logging.DEBUG, logger="childproc"), Context(hooks=hooks) as ctx:
        child = _started_tree(ctx, 6)
        child.kill_tree()
        assert child.wait(10) is not None and child.returncode == -signal.SIGKILL
        assert wait_until(lambda: ctx.wait(0.05) >= 0 and not children(), timeout=10), children()
    assert reaped == []
    assert "unknown child" not in caplog.text
    assert caplog.text.count("an orphan of a process-group tree") == 6


@pytest.mark.timeout(30)
def test_a_released_leaders_exit_is_the_hosts() -> None:
    """release() hands the child to the application: its exit (it leads a tracked
    group) goes to reaped_callback, never counted as an orphan that came back."""
    reaped: list[tuple[int, int]] = []
    hooks = Hooks(chldowner=SigchldOwner.LIBXL_ALWAYS, reaped_callback=lambda p, s, u: reaped.append((p, s)))
    with Context(hooks=hooks) as ctx:
        child = ctx.spawn(["sh", "-c", "sleep 0.2; exit 3"], kill_tree="process-group")
        pid = child.pid
        child.release()
        assert wait_until(lambda: ctx.wait(0.05) >= 0 and bool(reaped), timeout=10)
    assert reaped == [(pid, 3 << 8)]


@pytest.mark.timeout(30)
def test_a_member_that_dies_long_after_its_leader_is_still_the_trees(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A shell's background job outlives the shell by seconds: its group is tracked
    until it is empty, so the job's exit is the tree's, not the host's."""
    reaped: list[int] = []
    hooks = Hooks(chldowner=SigchldOwner.LIBXL_ALWAYS, reaped_callback=lambda p, s, u: reaped.append(p))
    with caplog.at_level(logging.DEBUG, logger="childproc"), Context(hooks=hooks) as ctx:
        child = ctx.spawn(
            ["sh", "-c", "sleep 2.5 & echo $!"], stdout=childproc.PIPE, kill_tree="process-group"
        )
        out, _ = child.communicate(timeout=10)
        job = int(out)
        assert wait_until(lambda: ctx.wait(0.1) >= 0 and job not in children() and not alive(job), timeout=10)
    assert reaped == []
    assert f"reaped [{job}]" in caplog.text and "an orphan of a process-group tree" in caplog.text


@pytest.mark.timeout(30)
def test_with_a_hosts_mark_what_comes_back_is_the_trees_too() -> None:
    reaped: list[int] = []
    assert _set(True)
    try:
        hooks = Hooks(chldowner=SigchldOwner.LIBXL_ALWAYS, reaped_callback=lambda p, s, u: reaped.append(p))
        with Context(hooks=hooks) as ctx:
            _started_tree(ctx, kill_on_close=True)
        assert not children() and reaped == []
        assert is_subreaper() is True  # (the host's, left alone)
    finally:
        _set(False)


@pytest.mark.timeout(30)
def test_a_watched_child_in_the_group_does_not_hold_up_the_rest() -> None:
    """A child of the context's own that joined the tree's group is its context's: it is
    skipped, and what came back of the tree is reaped all the same."""
    with Context(SigchldOwner.LIBXL_ALWAYS) as ctx:
        tree = _started_tree(ctx, kill_on_close=True)
        joined = ctx.spawn(["sh", "-c", "exit 7"], process_group=tree.pid)
        assert wait_until(lambda: stat_fields(joined.pid)[0] == "Z")
        tree.release()  # kills the group, reaps what came back
        assert set(children()) == {joined.pid}  # (its own zombie, for its context)
        event = joined.wait(10)
        assert event is not None and event.returncode == 7
    assert not children()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["kill_tree", "stop"])
def test_a_tree_killed_just_before_close_leaves_nothing(how: str) -> None:
    """The user kills the tree and closes at once: members still dying come back after
    the leader's exit was delivered; close waits for them (a little) and reaps them."""
    with Context(SigchldOwner.LIBXL_ALWAYS) as ctx:
        child = _started_tree(ctx, 4, trap_term=True)
        if how == "stop":
            event = child.stop(grace=0.1)
        else:
            child.kill_tree()
            event = child.wait(10)
        assert event is not None and event.returncode == -signal.SIGKILL
    assert not children()
